"""`fc`: fully-connected layer y = f(x @ W.T + b) (cuda-convnet's fc layer).

Several inputs are flattened (C, H, W order) and concatenated by the engine (join
"flat"), so the layer sees x [N, D]. weight [outputs, D], bias [outputs] (PyTorch's
layout). The products run in BLAS via numpy.matmul into reused buffers; Numba kernels
add the bias with the fused activation, and form the activation gradient with the
bias gradient.
"""
import numpy as np

from layers.base import FAN_KEY, INIT_B_KEY, INIT_KEY, INIT_W_KEY, Key, Layer
from layers.neuron.spec import NEURON_KEY, NONLINEARITY_KEY, parse as parse_neuron
from layers.registry import register
from layers.fc import cpu


@register
class FCLayer(Layer):
    type = "fc"
    examples = ({"outputs": 12, "neuron": "relu"},)
    doc = "fully connected: y = f(x @ W.T + b); inputs are flattened and concatenated"
    join = "flat"
    keys = {
        "outputs": Key(int, low=1, doc="number of output units"),
        "neuron": NEURON_KEY,
        "init_w": INIT_W_KEY,
        "init_b": INIT_B_KEY,
        "init": INIT_KEY,
        "fan": FAN_KEY,
        "nonlinearity": NONLINEARITY_KEY,
    }

    def setup(self, input_shape):
        self.act = parse_neuron(self.cfg["neuron"])
        self.keep_input = self.act.needs_input
        self.d = int(input_shape[0])
        return (self.cfg["outputs"],)

    def param_shapes(self):
        return {"weight": (self.cfg["outputs"], self.d), "bias": (self.cfg["outputs"],)}

    def macs(self):
        return self.d * self.cfg["outputs"]

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        m = self.cfg["outputs"]
        out = {"y": ("activation", (n, m)),
               "pre": ("workspace", (n, m) if self.keep_input else (1, 1))}
        if backward:
            out.update(dz=("gradient", (n, m)), dbias=("param_grad", (m,)),
                       dweight=("param_grad", (m, self.d)))
            if need_dx:
                out["dx"] = ("gradient", (n, self.d))
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1)
        if x.shape[1] != self.d:
            raise ValueError(f"fc '{self.name}': input has {x.shape[1]} features, expected {self.d}")
        w, b = params["weight"], params["bias"]
        n, m = x.shape[0], self.cfg["outputs"]
        buf = self.buffers(n, "forward", train)
        y, pre = buf["y"], buf["pre"]          # pre: (1, 1) unless the activation needs its input
        np.matmul(x, w.T, out=y)
        if not self.act.identity or np.any(b):
            cpu.bias_act(*self.act.kernel_args(), y, b, pre)
        self._x, self._y, self._pre = x, y, pre
        return y

    def backward(self, dy, params, need_dx=True):
        w = params["weight"]
        n, m = self._y.shape
        dy = np.ascontiguousarray(dy, dtype=np.float32).reshape(n, m)
        buf = self.buffers(n, "backward", need_dx=need_dx)
        dz, db, dw = buf["dz"], buf["dbias"], buf["dweight"]
        cpu.grad_act_bias(*self.act.kernel_args(), dy, self._y, self._pre, dz, db)
        np.matmul(dz.T, self._x, out=dw)
        dx = None
        if need_dx:
            dx = buf["dx"]
            np.matmul(dz, w, out=dx)
        return dx, {"weight": dw, "bias": db}
