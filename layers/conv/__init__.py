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
        f, pixels = self.filters, n * oh * ow
        out = {"cols": ("workspace", (self.channels * self.size * self.size, pixels)),
               "tmp": ("workspace", (f, pixels)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, oh * ow))
        if backward:
            out["dtmp"] = ("gradient", (f, pixels))   # cols is reused as dcols
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    # ---- compute ------------------------------------------------------------
    def _blocks(self):
        """Row slices of (filters, cols rows) for each group."""
        fg = self.filters // self.groups
        kg = (self.channels // self.groups) * self.size * self.size
        return [(slice(i * fg, (i + 1) * fg), slice(i * kg, (i + 1) * kg)) for i in range(self.groups)]

    def _im2col(self, x):
        oh, ow = self.out_hw
        cols = self.buffer("cols", (self.channels * self.size * self.size, x.shape[0] * oh * ow))
        cpu.im2col(x, self.size, self.stride, self.padding, oh, ow, cols)
        self._cols_valid = True
        return cols

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        f = self.filters
        oh, ow = self.out_hw
        cols = self._im2col(x)
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        tmp = self.buffer("tmp", (f, n * oh * ow))
        for fs, ks in self._blocks():
            np.matmul(w2[fs], cols[ks], out=tmp[fs])
        y = self.buffer("y", (n, f, oh, ow))
        y3 = y.reshape(n, f, oh * ow)
        keep = self.act.needs_input                      # abs, square: the gradient needs x
        pre = self.buffer("pre", y3.shape) if keep else y3
        cpu.bias_act(tmp, np.ascontiguousarray(params["bias"], np.float32), *self.act.kernel_args(),
                     keep, y3, pre)
        self._x, self._y3, self._pre = x, y3, pre
        return y

    def backward(self, dy, params, need_dx=True):
        n = self._x.shape[0]
        f = self.filters
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        dtmp = self.buffer("dtmp", (f, dy3.shape[0] * dy3.shape[2]))
        db = np.empty(f, np.float32)
        cpu.grad_gather(dy3, self._y3, self._pre, *self.act.kernel_args(), dtmp, db)
        # cols doubles as dcols below; redo it if an earlier backward overwrote it
        cols = self._buffers["cols"] if self._cols_valid else self._im2col(self._x)
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        dw2 = np.empty(w2.shape, np.float32)
        blocks = self._blocks()
        for fs, ks in blocks:
            np.matmul(dtmp[fs], cols[ks].T, out=dw2[fs])
        grads = {"weight": dw2.reshape(self.param_shapes()["weight"]), "bias": db}
        if not need_dx:
            return None, grads
        dcols = cols          # its contents were last needed for dw: reuse the memory
        self._cols_valid = False
        for fs, ks in blocks:
            np.matmul(w2[fs].T, dtmp[fs], out=dcols[ks])
        dx = self.buffer("dx", (n, self.channels) + self.input_shape[1:])
        oh, ow = self.out_hw
        cpu.col2im(dcols, self.size, self.stride, self.padding, oh, ow, dx)
        return dx, grads
