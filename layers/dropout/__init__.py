"""`dropout`: inverted dropout (Hinton et al. 2012, as in Caffe's dropout layer).

In training each unit is kept with probability 1 - rate and kept units are scaled by
1 / (1 - rate); at test time the layer is the identity. The mask is a pure function of
the draw key passed as `rng` to `forward` (layers.draw_key: a DrawKey or an integer seed),
the layer's name and each unit's global sample and element index: the CUDA kernel draws
the same one. Works on any input rank.
"""
import numpy as np

from layers import draw_key, elementwise_cpu
from layers.base import Key, Layer, LayerError
from layers.registry import register


@register
class DropoutLayer(Layer):
    type = "dropout"
    examples = ({"rate": 0.3},)
    uses_rng = True
    doc = "inverted dropout: drop units with probability `rate` in training, identity at test"
    keys = {"rate": Key(float, 0.5, low=0.0, high=1.0,
                        doc="probability of dropping a unit, 0 <= rate < 1")}

    def setup(self, input_shape):
        if self.cfg["rate"] >= 1.0:
            raise LayerError("rate", f"must be < 1 (1 drops every unit), got {self.cfg['rate']!r}")
        self._mask = None
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        if not train:
            return {}          # the identity: the output is the input itself
        shape = (n,) + self.input_shape
        out = {"mask": ("workspace", shape), "y": ("activation", shape)}
        if backward and need_dx:
            out["dx"] = ("gradient", shape)
        return out

    def forward(self, x, params, train=False, rng=None):
        if not train:
            self._mask = None
            return x
        if rng is None:
            raise ValueError(f"dropout '{self.name}': training needs a draw key (layers.draw_key.DrawKey)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        rate = self.cfg["rate"]
        b = self.buffers(x.shape[0], "forward", train)
        mask, y = b["mask"], b["y"]
        args = draw_key.as_key(rng).kernel_args(self.name, x[0].size)
        elementwise_cpu.dropout_forward(x.reshape(-1), *args, draw_key.threshold(rate),
                                        np.float32(1.0 / (1.0 - rate)), mask.reshape(-1), y.reshape(-1))
        self._mask = mask
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        if self._mask is None:
            return dy, {}
        dy = np.ascontiguousarray(dy, dtype=np.float32).reshape(self._mask.shape)
        dx = self.buffers(dy.shape[0], "backward", train=True)["dx"]   # a mask: forward trained
        elementwise_cpu.dropout_backward(dy.reshape(-1), self._mask.reshape(-1), dx.reshape(-1))
        return dx, {}
