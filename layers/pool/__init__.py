"""`pool`: max or average pooling over square windows, per channel, with a fused activation.

Output side = ceil((in - size) / stride) + 1 (cuda-convnet's rule, `out_size_ceil`): the
last window may run off the bottom/right edge and is clipped there (55 -> 27 and 32 -> 16
for size 3 stride 2). This equals PyTorch's `ceil_mode=True` with no padding. `avg`
divides each window by its number of in-bounds elements. `max` sends the gradient to the
first maximal element of the window in row-major order (PyTorch, Caffe); cuda-convnet's
kernel gives it to every element tied for the maximum. The `neuron` activation is applied
after pooling. `stride` defaults to `size` and may not exceed it (cuda-convnet forbids
windows that skip input).

macs() counts the window reads (comparisons or additions) per image.
"""
import numpy as np

from layers.base import Key, Layer, LayerError, out_size_ceil
from layers.neuron.spec import NEURON_KEY, parse
from layers.pool import cpu
from layers.registry import register

_DUMMY = np.zeros((1, 1, 1, 1), np.float32)


@register
class PoolLayer(Layer):
    type = "pool"
    examples = ({"mode": "max", "size": 3, "stride": 2, "neuron": "abs"},
                {"mode": "avg", "size": 3, "stride": 2, "neuron": "brelu[2]"})
    doc = "max | avg pooling over size x size windows (cuda-convnet's ceil output rule)"
    spatial = True
    keys = {
        "mode": Key(str, choices=("max", "avg"), doc="max or average over each window"),
        "size": Key(int, low=1, doc="side of the square window"),
        "stride": Key(int, None, low=1, doc="step between windows; default: size"),
        "neuron": NEURON_KEY,
    }

    def setup(self, input_shape):
        c, h, w = input_shape
        size = self.size
        if self.stride is None:
            self.cfg["stride"] = size
        stride = self.stride
        if size > h or size > w:
            raise LayerError("size", f"pool window {size} larger than input {h}x{w}")
        if stride > size:
            raise LayerError("stride", f"stride {stride} larger than the window {size}: windows "
                                       "would skip input (cuda-convnet forbids it)")
        self.act = parse(self.neuron)
        self.out_hw = (out_size_ceil(h, size, stride), out_size_ceil(w, size, stride))
        return (c,) + self.out_hw

    def macs(self):
        c, h, w = self.input_shape

        def reads(side, outs):   # only the last window can run off the edge (stride <= size)
            last = (outs - 1) * self.stride
            return (outs - 1) * self.size + min(last + self.size, side) - last
        return c * reads(h, self.out_hw[0]) * reads(w, self.out_hw[1])

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = super().buffer_shapes(n, train, backward, need_dx)
        y = out["y"][1]
        if self.act.needs_input:
            out["pre"] = ("workspace", y)
        if self.mode == "max":
            out["arg"] = ("workspace", y)      # int32 indices in a float32 buffer
            out["scratch"] = ("workspace", cpu.max_scratch_shape(self.input_shape[2]))
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n, c, h, w = x.shape
        b = self.buffers(n, "forward", train)
        y = b["y"]
        pre = b["pre"] if self.act.needs_input else _DUMMY   # abs, square (declared only then)
        if self.mode == "max":
            arg = b["arg"].view(np.int32)
            cpu.max_forward(x, self.size, self.stride, *self.act.kernel_args(), y, arg, pre, b["scratch"])
            self._arg = arg
        else:
            cpu.avg_forward(x, self.size, self.stride, *self.act.kernel_args(), y, pre)
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
            cpu.avg_backward(g, self._y, self._pre, self.size, self.stride, *act, dx)
        return dx, {}
