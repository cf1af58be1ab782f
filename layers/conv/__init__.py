"""`conv`: 2-D convolution with optional groups and a fused activation.

im2col (Numba) -> one BLAS GEMM per group (numpy, outside Numba) -> bias + activation
scatter (Numba). Backward mirrors it: gradient gather -> GEMMs -> col2im.
"""
import numpy as np

from layers.base import INIT_B_KEY, INIT_W_KEY, Key, Layer, LayerError, out_size_floor
from layers.conv import cpu
from layers.neuron.spec import NEURON_KEY, parse as parse_neuron
from layers.registry import register


@register
class ConvLayer(Layer):
    type = "conv"
    doc = "2-D convolution (cross-correlation), weight [filters, channels/groups, size, size]"
    spatial = True
    keys = {
        "filters": Key(int, low=1, doc="output channels, over all groups"),
        "size": Key(int, low=1, doc="side of the square kernel"),
        "stride": Key(int, 1, low=1, doc="step between kernel positions"),
        "padding": Key(int, 0, low=0, doc="zeros added on each side"),
        "padding_end": Key(int, 0, low=0, doc="extra zero rows and columns past the bottom and right "
                           "edges, on top of `padding`; cuda-convnet's output rule "
                           "1 + ceil((in + 2 padding - size) / stride) is "
                           "padding_end = (size - in - 2 padding) mod stride"),
        "groups": Key(int, 1, low=1, doc="split channels and filters into this many independent groups"),
        "neuron": NEURON_KEY,
        "init_w": INIT_W_KEY,
        "init_b": INIT_B_KEY,
    }

    def setup(self, input_shape):
        c, h, w = input_shape
        f, k, s, p, g = self.filters, self.size, self.stride, self.padding, self.groups
        if c % g or f % g:
            raise LayerError("groups", f"groups={g} must divide both the input channels ({c}) "
                                       f"and filters ({f})")
        e = self.padding_end     # the kernels read zeros past the bottom/right edge by themselves
        if k > h + 2 * p + e or k > w + 2 * p + e:
            raise LayerError("size", f"kernel size {k} is larger than the padded input "
                                     f"{h + 2 * p + e}x{w + 2 * p + e} ({h}x{w} with padding {p}"
                                     + (f" and padding_end {e})" if e else ")"))
        self.channels = c
        self.act = parse_neuron(self.neuron)
        self.out_hw = (out_size_floor(h + e, k, s, p), out_size_floor(w + e, k, s, p))
        return (f,) + self.out_hw

    def param_shapes(self):
        return {"weight": (self.filters, self.channels // self.groups, self.size, self.size),
                "bias": (self.filters,)}

    def macs(self):
        oh, ow = self.out_hw
        return self.filters * (self.channels // self.groups) * self.size * self.size * oh * ow

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        oh, ow = self.out_hw
        f, rows = self.filters, self.channels * self.size * self.size
        span = self._chunk(n) * oh * ow                 # columns of one chunk of images
        out = {"cols": ("workspace", (rows * span,)),
               "tmp": ("workspace", (f * span,)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, oh * ow))
        if backward:
            out["dtmp"] = ("gradient", (f * span,))     # cols is reused as dcols
            out["dweight"] = ("param_grad", (f, rows // self.groups))
            out["dbias"] = ("param_grad", (f,))
            if n > self._chunk(n):
                out["dw_part"] = ("gradient", (f // self.groups, rows // self.groups))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    # ---- compute ------------------------------------------------------------
    # The batch goes through in chunks of images whose im2col matrix is about CHUNK_BYTES:
    # the columns are still in cache when the GEMM reads them, and the workspace stays
    # small however large the batch (AlexNet's conv1 would need 562 MB per column at
    # batch 128). Each chunk's GEMM keeps at least ~700 columns, where BLAS runs at full
    # speed (measured: bench/ notes in the closing note of issue 5).
    CHUNK_BYTES = 8 << 20

    def _chunk(self, n):
        oh, ow = self.out_hw
        per_image = 4 * self.channels * self.size * self.size * oh * ow
        return int(max(1, min(n, self.CHUNK_BYTES // per_image)))

    def _blocks(self):
        """Row slices of (filters, cols rows) for each group."""
        fg = self.filters // self.groups
        kg = (self.channels // self.groups) * self.size * self.size
        return [(slice(i * fg, (i + 1) * fg), slice(i * kg, (i + 1) * kg)) for i in range(self.groups)]

    def _views(self, n0, n1, *tags):
        """2-D contiguous views of the flat chunk buffers for images n0..n1."""
        oh, ow = self.out_hw
        m = (n1 - n0) * oh * ow
        rows = {"cols": self.channels * self.size * self.size, "tmp": self.filters, "dtmp": self.filters}
        return [self._buffers[t][:rows[t] * m].reshape(rows[t], m) for t in tags]

    def _im2col(self, x, n0, n1):
        oh, ow = self.out_hw
        cols, = self._views(n0, n1, "cols")
        cpu.im2col(x[n0:n1], self.size, self.stride, self.padding, oh, ow, cols)
        self._cols_hold = (n0, n1)
        return cols

    def _chunks(self, n):
        c = self._chunk(n)
        return [(n0, min(n, n0 + c)) for n0 in range(0, n, c)]

    def _allocate(self, n, backward=False, need_dx=True):
        for tag, (_, shape) in self.buffer_shapes(n, backward=backward, need_dx=need_dx).items():
            self.buffer(tag, shape)

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        f = self.filters
        oh, ow = self.out_hw
        self._allocate(n)
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        bias = np.ascontiguousarray(params["bias"], np.float32)
        y3 = self._buffers["y"].reshape(n, f, oh * ow)
        keep = self.act.needs_input                      # abs, square: the gradient needs x
        pre = self._buffers["pre"] if keep else y3
        for n0, n1 in self._chunks(n):
            cols = self._im2col(x, n0, n1)
            tmp, = self._views(n0, n1, "tmp")
            for fs, ks in self._blocks():
                np.matmul(w2[fs], cols[ks], out=tmp[fs])
            cpu.bias_act(tmp, bias, *self.act.kernel_args(), keep, y3[n0:n1], pre[n0:n1])
        self._x, self._y3, self._pre = x, y3, pre
        return self._buffers["y"]

    def backward(self, dy, params, need_dx=True):
        n = self._x.shape[0]
        f = self.filters
        oh, ow = self.out_hw
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        self._allocate(n, backward=True, need_dx=need_dx)
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        dw2 = self._buffers["dweight"]
        db = np.zeros(f, np.float64)
        db_part = self._buffers["dbias"]
        dx = self._buffers["dx"] if need_dx else None
        blocks = self._blocks()
        # last chunk first: forward left its columns in the workspace
        for i, (n0, n1) in enumerate(reversed(self._chunks(n))):
            dtmp, = self._views(n0, n1, "dtmp")
            cpu.grad_gather(dy3[n0:n1], self._y3[n0:n1], self._pre[n0:n1], *self.act.kernel_args(),
                            dtmp, db_part)
            db += db_part
            cols = self._views(n0, n1, "cols")[0] if self._cols_hold == (n0, n1) \
                else self._im2col(self._x, n0, n1)
            for fs, ks in blocks:
                if i == 0:
                    np.matmul(dtmp[fs], cols[ks].T, out=dw2[fs])
                else:
                    part = self._buffers["dw_part"]
                    np.matmul(dtmp[fs], cols[ks].T, out=part)
                    dw2[fs] += part
            if need_dx:
                self._cols_hold = None    # its contents were last needed for dw: reuse as dcols
                for fs, ks in blocks:
                    np.matmul(w2[fs].T, dtmp[fs], out=cols[ks])
                cpu.col2im(cols, self.size, self.stride, self.padding, oh, ow, dx[n0:n1])
        db_part[:] = db
        grads = {"weight": dw2.reshape(self.param_shapes()["weight"]), "bias": db_part}
        return dx, grads
