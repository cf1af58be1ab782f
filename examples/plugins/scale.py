"""A `scale` layer: y[n, c, ...] = x[n, c, ...] * w[c], a learnable weight per channel.

An example plugin (see README.md here): a Layer subclass registered under its YAML `type`,
written with plain NumPy. The engine checks its keys, builds it with the input shape,
gives it its parameters in `forward`/`backward`, and trains it with the solver.
"""
import numpy as np

from layers.base import Key, Layer
from layers.registry import register


@register
class ScaleLayer(Layer):
    type = "scale"
    doc = "y = x * w, one learnable weight per channel"
    keys = {
        # a key named init_w also gives the layer lr_w and wd, as on conv and fc
        "init_w": Key(float, 0.0, low=0.0, doc="std of the Gaussian noise around the starting weight 1"),
    }

    def setup(self, input_shape):
        self.channels = input_shape[0]
        return input_shape                      # the output shape: unchanged

    def param_shapes(self):
        return {"weight": (self.channels,)}

    def init_params(self, rng):
        params = super().init_params(rng)       # Gaussian(0, init_w)
        params["weight"] += 1.0
        return params

    def macs(self):
        return int(np.prod(self.input_shape))

    def _per_channel(self, w):
        """w shaped to broadcast over [N, C, ...]."""
        return w.reshape((1, -1) + (1,) * (len(self.input_shape) - 1))

    def forward(self, x, params, train=False, rng=None):
        self._x = x                              # the engine keeps x intact until backward
        return (x * self._per_channel(params["weight"])).astype(np.float32)

    def backward(self, dy, params, need_dx=True):
        axes = (0,) + tuple(range(2, dy.ndim))   # everything but the channel axis
        dw = (dy * self._x).sum(axis=axes, dtype=np.float64).astype(np.float32)
        dx = (dy * self._per_channel(params["weight"])).astype(np.float32) if need_dx else None
        return dx, {"weight": dw}
