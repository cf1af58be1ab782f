"""`neuron`: an element-wise activation as a layer of its own (cuda-convnet's neuron layer).

`fn` is a neuron name in cuda-convnet's syntax (`relu`, `tanh[1.7159,0.6667]`, `brelu[6]`;
the table is in layers/neuron/spec.py). conv, fc and local fuse the same functions on their
output with their `neuron:` key: they check it with `spec.NEURON_KEY`, turn it into
(code, a, b) with `spec.parse(...).kernel_args()`, and inline `activate`/`activate_grad`
from layers/neuron/cpu.py (CUDA: layers/neuron/cuda.py) in their bias kernels.
"""
import numpy as np

from layers.base import REQUIRED, Layer
from layers.neuron import cpu, spec
from layers.registry import register


@register
class NeuronLayer(Layer):
    type = "neuron"
    examples = ({"fn": "logistic"}, {"fn": "square"})
    doc = f"element-wise activation f(x): {spec.SYNTAX}"
    keys = {"fn": spec.NeuronKey(REQUIRED, doc="the activation")}

    def setup(self, input_shape):
        self.act = spec.parse(self.fn)
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        y = (n,) + self.output_shape
        out = {"y": ("activation", y)}
        if backward and need_dx and not self.act.identity:
            out["dx"] = ("gradient", y)
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        y = self.buffers(x.shape[0], "forward", train)["y"]
        cpu.forward(*self.act.kernel_args(), x.reshape(-1), y.reshape(-1))
        # abs and square differentiate through x: the engine leaves a layer's input
        # untouched until its backward, so a reference is enough
        self._x, self._y = x, y
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        if self.act.identity:
            return dy, {}
        y = self._y
        dx = self.buffers(y.shape[0], "backward", need_dx=need_dx)["dx"]
        pre = self._x if self.act.needs_input else y
        cpu.backward(*self.act.kernel_args(), np.ascontiguousarray(dy, np.float32).reshape(-1),
                     y.reshape(-1), pre.reshape(-1), dx.reshape(-1))
        return dx, {}
