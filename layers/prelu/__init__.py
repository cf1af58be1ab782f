"""`prelu`: y = x where x > 0, a * x elsewhere, with a learned slope a per channel (PyTorch's
nn.PReLU(num_parameters=C)), or one slope for all (`shared: true`, nn.PReLU()).

Channels are the first axis of the input: maps after a conv ([C, H, W]), features after an
fc ([D]). The parameter is `weight` (PyTorch's name): [C], or [1] when shared, all starting
at `init_slope` (0.25: PyTorch's `init`, named like init_w and init_b because `init` is the
weight layers' init scheme, which `defaults:` may set net-wide). It takes the solver's lr_w
and wd multipliers; the slopes decay like any weight unless `wd: 0` is set (PyTorch's SGD
decays them too; He et al. did not).
"""
import numpy as np

from layers.base import LR_W_KEY, WD_KEY, Key, Layer
from layers.prelu import cpu
from layers.registry import register

_DUMMY3 = np.zeros((1, 1, 1), np.float32)


@register
class PReLULayer(Layer):
    type = "prelu"
    examples = ({}, {"shared": True, "init_slope": 0.1})
    doc = "parametric relu: y = x (x > 0), a x (else), a learned per channel (PyTorch's PReLU)"
    keys = {
        "init_slope": Key(float, 0.25, doc="starting slope of the negative part (PyTorch's init, 0.25)"),
        "shared": Key(bool, False, doc="one slope for every channel instead of one per channel"),
        "lr_w": LR_W_KEY,
        "wd": WD_KEY,
    }

    def setup(self, input_shape):
        self.channels = int(input_shape[0])
        self.pixels = int(np.prod(input_shape[1:], dtype=np.int64))
        return input_shape

    def param_shapes(self):
        return {"weight": (1 if self.shared else self.channels,)}

    def init_params(self, rng):
        return {"weight": np.full(self.param_shapes()["weight"], self.init_slope, np.float32)}

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = super().buffer_shapes(n, train, backward, need_dx)
        if backward:
            out["dweight"] = ("param_grad", self.param_shapes()["weight"])
            if self.shared:
                out["dslope"] = ("workspace", (self.channels,))    # per channel, then summed
        return out

    def _view(self, a):
        return a.reshape(a.shape[0], self.channels, self.pixels)

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        y = self.buffers(x.shape[0], "forward", train)["y"]
        cpu.forward(self._view(x), params["weight"], self._view(y))
        self._x3 = self._view(x)       # untouched by the engine until this layer's backward
        return y

    def backward(self, dy, params, need_dx=True):
        x3 = self._x3
        n = x3.shape[0]
        b = self.buffers(n, "backward", need_dx=need_dx)
        dw = b["dweight"]
        per_channel = b["dslope"] if self.shared else dw
        dx = b["dx"] if need_dx else None
        dy3 = self._view(np.ascontiguousarray(dy, np.float32).reshape((n,) + self.output_shape))
        cpu.backward(dy3, x3, params["weight"], need_dx, self._view(dx) if need_dx else _DUMMY3, per_channel)
        if self.shared:
            dw[0] = per_channel.sum(dtype=np.float32)
        return dx, {"weight": dw}
