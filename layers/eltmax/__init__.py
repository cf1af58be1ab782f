"""`eltmax`: the element-wise maximum of 2+ inputs of one shape (cuda-convnet's eltmax).

    y = max_i x_i,        dL/dx_i = dL/dy where input i holds the maximum, else 0

Ties: the whole gradient goes to the FIRST input (in `inputs` order) holding the maximum,
as max pooling does, so the input gradients always sum to dL/dy. (cuda-convnet's kernel
gives dL/dy to every input equal to the output, counting a tie twice.) Forward keeps the
winning input's index per element (`arg`, float32: exact for any number of inputs a net
can have); inputs are not joined (join "separate").
"""
import numpy as np

from layers.base import Layer, check_same_shapes
from layers.eltmax import cpu
from layers.registry import register


@register
class EltMaxLayer(Layer):
    type = "eltmax"
    examples = ({},)
    doc = "element-wise maximum of 2+ inputs of one shape; the gradient goes to the first maximum"
    join = "separate"
    keys = {}

    def setup(self, input_shape):
        check_same_shapes(self)
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        shape = (n,) + self.output_shape
        out = {"y": ("activation", shape), "arg": ("workspace", shape)}
        if backward and need_dx:
            out.update({f"dx{i}": ("gradient", shape) for i in range(len(self.input_shapes))})
        return out

    def forward(self, xs, params, train=False, rng=None):
        b = self.buffers(xs[0].shape[0], "forward", train)
        y, arg = b["y"], b["arg"]
        for i, x in enumerate(xs):
            cpu.max_into(np.ascontiguousarray(x, np.float32).reshape(-1), i, y.reshape(-1), arg.reshape(-1))
        self._arg = arg
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        dy = np.ascontiguousarray(dy, np.float32).reshape(self._arg.shape)
        b = self.buffers(dy.shape[0], "backward", need_dx=need_dx)
        dxs = []
        for i in range(len(self.input_shapes)):
            dx = b[f"dx{i}"]
            cpu.route(dy.reshape(-1), self._arg.reshape(-1), i, dx.reshape(-1))
            dxs.append(dx)
        return dxs, {}
