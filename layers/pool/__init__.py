"""`pool`: max or average pooling over square windows, per channel, with a fused activation.

Output side (`out_side`): with `ceil: true` (the default) ceil((in + 2 padding - size) /
stride) + 1, less one if the last window would start past the input and its left padding
(PyTorch's ceil_mode=True rule; without padding it is cuda-convnet's rule: 55 -> 27 and
32 -> 16 for size 3 stride 2, the last window running off the bottom/right edge, clipped
there). `ceil: false` is PyTorch's floor rule, floor((in + 2 padding - size) / stride) + 1.
`padding` adds size//2 at most on every side: padded cells never win a max (-inf), and
count in an average's divisor as PyTorch's count_include_pad=True does: `avg` divides a
window by its cells inside the padded input (zeros included, a ceil overhang past the
padding not), so without padding by its in-bounds cells. `max` sends the gradient to the
first maximal element of the window in row-major order (PyTorch, Caffe); cuda-convnet's
kernel gives it to every element tied for the maximum. The `neuron` activation is applied
after pooling. `stride` defaults to `size` and may not exceed it (cuda-convnet forbids
windows that skip input).

`global: true` averages each whole plane (output 1x1), `adaptive: [H, W]` (or N for
[N, N]) averages over PyTorch's AdaptiveAvgPool2d bins, rows floor(i*in/H) ..
ceil((i+1)*in/H) - 1 (neighbouring bins overlap where H does not divide in); both take
mode avg and no size, stride or padding.

macs() counts the window reads (comparisons or additions) per image.
"""
import math

import numpy as np

from layers.base import INT_MAX, Key, Layer, LayerError, shown
from layers.neuron.spec import NEURON_KEY, parse
from layers.pool import cpu
from layers.registry import register

_DUMMY = np.zeros((1, 1, 1, 1), np.float32)


@register
class PoolLayer(Layer):
    type = "pool"
    examples = ({"mode": "max", "size": 3, "stride": 2, "neuron": "abs"},
                {"mode": "avg", "size": 3, "stride": 2, "neuron": "brelu[2]"},
                {"mode": "max", "size": 3, "stride": 2, "padding": 1, "neuron": "leaky"},
                {"mode": "avg", "size": 2, "stride": 2, "padding": 1, "ceil": False, "neuron": "selu"},
                {"mode": "avg", "adaptive": [3, 3], "neuron": "elu"})
    doc = "max | avg pooling over size x size windows (cuda-convnet's ceil output rule), global or adaptive avg"
    spatial = True
    keys = {
        "mode": Key(str, choices=("max", "avg"), doc="max or average over each window"),
        "size": Key(int, None, low=1, doc="side of the square window; required unless global or adaptive"),
        "stride": Key(int, None, low=1, doc="step between windows; default: size"),
        "padding": Key(int, 0, low=0, doc="cells added on every side, at most size//2: never a max; "
                       "in an average's divisor (PyTorch's count_include_pad=True)"),
        "ceil": Key(bool, True, doc="output side ceil((in + 2 padding - size)/stride) + 1 (PyTorch's "
                    "ceil_mode; cuda-convnet's rule); false: floor"),
        "global": Key(bool, False, doc="average over the whole plane (output 1x1); mode avg"),
        "adaptive": Key(list, None, doc="[H, W] (or N): average over PyTorch's AdaptiveAvgPool2d bins; mode avg"),
        "neuron": NEURON_KEY,
    }

    def setup(self, input_shape):
        c, h, w = input_shape
        self.act = parse(self.neuron)
        self.bins = self._bins()
        if self.bins is not None:
            self.pad = 0
            self.out_hw = self.bins
            return (c,) + self.out_hw
        size, pad = self.size, self.padding
        if size is None:
            raise LayerError("size", "missing required key for a pool layer (or set global: true or "
                                     "adaptive: [H, W])")
        if self.stride is None:
            self.cfg["stride"] = size
        stride = self.stride
        if pad > size // 2:
            raise LayerError("padding", f"padding {pad} more than half the window {size} (PyTorch's "
                                        "limit: a window would hold padding only)")
        if size > h + 2 * pad or size > w + 2 * pad:
            padded = " padded" if pad else ""
            raise LayerError("size", f"pool window {size} larger than{padded} input "
                                     f"{h + 2 * pad}x{w + 2 * pad}")
        if stride > size:
            raise LayerError("stride", f"stride {stride} larger than the window {size}: windows "
                                       "would skip input (cuda-convnet forbids it)")
        self.pad = pad
        self.out_hw = tuple(out_side(v, size, stride, pad, self.ceil) for v in (h, w))
        return (c,) + self.out_hw

    def _bins(self):
        """(H, W) of global or adaptive pooling, checked; None for windowed pooling."""
        adaptive, whole = self.adaptive, self.cfg["global"]
        if adaptive is None and not whole:
            return None
        key = "global" if whole else "adaptive"
        if whole and adaptive is not None:
            raise LayerError("adaptive", "global and adaptive exclude each other (global is adaptive: [1, 1])")
        if self.mode != "avg":
            raise LayerError("mode", f"{key} pooling averages: mode must be avg, got {self.mode}")
        for other in ("size", "stride"):
            if self.cfg[other] is not None:
                raise LayerError(other, f"{other} does not apply to {key} pooling (the bins set the windows)")
        if self.padding or not self.ceil:
            raise LayerError("padding" if self.padding else "ceil", f"does not apply to {key} pooling")
        if whole:
            return (1, 1)
        bins = [adaptive, adaptive] if isinstance(adaptive, int) else adaptive
        if (not isinstance(bins, list) or len(bins) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= INT_MAX
                           for v in bins)):
            raise LayerError("adaptive", f"must be [H, W] (or N), positive integers, got {shown(adaptive)}")
        return tuple(bins)

    def kernel_geometry(self):
        """(size, stride, padding, adaptive) as the kernels take them (adaptive: 0 or 1)."""
        if self.bins is not None:
            return 1, 1, 0, 1
        return self.size, self.stride, self.pad, 0

    def macs(self):
        c, h, w = self.input_shape
        return c * window_reads(h, self.out_hw[0], self.kernel_geometry()) * \
            window_reads(w, self.out_hw[1], self.kernel_geometry())

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = super().buffer_shapes(n, train, backward, need_dx)
        y = out["y"][1]
        if self.act.needs_input:
            out["pre"] = ("workspace", y)
        if self.mode == "max":
            out["arg"] = ("workspace", y)      # int32 indices in a float32 buffer
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n, c, h, w = x.shape
        b = self.buffers(n, "forward", train)
        y = b["y"]
        pre = b["pre"] if self.act.needs_input else _DUMMY   # abs, square (declared only then)
        if self.mode == "max":
            arg = b["arg"].view(np.int32)
            cpu.max_forward(x, self.size, self.stride, self.pad, *self.act.kernel_args(), y, arg, pre)
            self._arg = arg
        else:
            cpu.avg_forward(x, *self.kernel_geometry(), *self.act.kernel_args(), y, pre)
        self._y, self._pre, self._in_hw = y, pre, (h, w)
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        g = np.ascontiguousarray(dy, np.float32).reshape(self._y.shape)
        n, c = g.shape[:2]
        h, w = self._in_hw
        dx = self.buffers(n, "backward", need_dx=need_dx)["dx"]
        act = self.act.kernel_args()
        if self.mode == "max":
            cpu.max_backward(g, self._y, self._pre, self._arg, *act, dx.reshape(n, c, h * w))
        else:
            cpu.avg_backward(g, self._y, self._pre, *self.kernel_geometry(), *act, dx)
        return dx, {}


def out_side(side, size, stride, padding=0, ceil=True):
    """Output side of a windowed pool: PyTorch's rule, with ceil_mode = `ceil`."""
    span = side + 2 * padding - size
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= side + padding:    # the last window would start past the input
        out -= 1
    return out


def window_reads(side, outs, geometry):
    """Sum over one axis' windows of their in-bounds lengths, in closed form for windowed
    pools (a huge plane must not loop over its windows)."""
    size, stride, pad, adaptive = geometry
    if adaptive:     # bins j-1 and j share a cell unless outs divides j*side: gcd - 1 of them do
        return side + outs - math.gcd(side, outs)

    def falling(a, b, c):     # sum over o in [a, b) of c - o * stride
        n = max(b - a, 0)
        return n * c - stride * (n * (a + b - 1) // 2)
    left = falling(0, min(outs, -(-pad // stride)), pad)              # windows starting in the padding
    right = -falling(max(0, (side + pad - size) // stride + 1), outs, side + pad - size)   # past the end
    return outs * size - left - right
