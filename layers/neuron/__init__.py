"""`neuron`: an element-wise activation as a layer of its own (cuda-convnet's neuron layer).

The same activations can be fused on conv, fc and pool outputs with their `neuron:` key;
`Activation` below is the helper those layers use.
"""
import numpy as np

from layers.base import Key, Layer, NEURON_FNS
from layers.registry import register
from layers.neuron import cpu


class Activation:
    """A fused activation: applies f in place on a layer's output, and its gradient.

    Keeps the pre-activation only where the gradient needs it (abs)."""

    def __init__(self, owner, fn):
        self.owner, self.fn, self.code = owner, fn, cpu.CODES[fn]
        self.keep_input = self.code in cpu.NEEDS_INPUT

    @property
    def identity(self):
        return self.code == 0

    def forward(self, out):
        """Replace `out` (contiguous float32) by f(out); returns out."""
        if self.identity:
            return out
        flat = out.reshape(-1)
        if self.keep_input:
            pre = self.owner.buffer("neuron_in", out.shape)
            pre[...] = out
            self._pre = pre
        cpu.forward(self.code, flat, flat)
        return out

    def backward(self, dy, y, out=None):
        """dL/d(pre-activation) from dL/dy and the output y; `out` may alias dy."""
        if self.identity:
            return dy
        if out is None:
            out = self.owner.buffer("neuron_grad", dy.shape)
        pre = self._pre.reshape(-1) if self.keep_input else y.reshape(-1)
        cpu.backward(self.code, np.ascontiguousarray(dy).reshape(-1), y.reshape(-1), pre, out.reshape(-1))
        return out


@register
class NeuronLayer(Layer):
    type = "neuron"
    doc = "element-wise activation f(x): relu | tanh | logistic | abs | linear"
    keys = {"fn": Key(str, choices=NEURON_FNS, doc="the activation")}

    def setup(self, input_shape):
        self.act = Activation(self, self.fn)
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        y = (n,) + self.output_shape
        out = {"y": ("activation", y)}
        if self.act.keep_input:
            out["neuron_in"] = ("workspace", y)
        if backward and need_dx and not self.act.identity:
            out["neuron_grad"] = ("gradient", y)
        return out

    def forward(self, x, params, train=False, rng=None):
        y = self.buffer("y", x.shape)
        y[...] = x
        self._y = self.act.forward(y)
        return self._y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        return self.act.backward(dy, self._y), {}
