"""`batchnorm`: batch normalisation (Ioffe & Szegedy 2015) with PyTorch's conventions.

Per channel after a conv (input [C, H, W]: statistics over N*H*W values), per feature after
an fc (input [D]). Training normalises by the batch's mean and biased variance; evaluation
(Net.forward, validation) by the running statistics. y = f(weight * xhat + bias), `neuron`
fused. Parameters `weight` (init 1) and `bias` (init 0), with the solver's lr_w / lr_b / wd
multipliers (the weights decay unless wd says otherwise, as in PyTorch; biases never do,
as every bias here). State `running_mean` (init 0) and `running_var` (init 1): updated after
the forward of each training step as PyTorch does, running = (1 - momentum) running +
momentum batch, the variance unbiased (M / (M - 1), M = N*H*W).

Statistics of the whole batch (`whole_batch`): the CPU's threading "batch" would give each
half its own, so the engine keeps a net with a batchnorm unsplit (engine.columns).
"""
import numpy as np

from layers.base import LR_B_KEY, LR_W_KEY, WD_KEY, Key, Layer, LayerError
from layers.batchnorm import cpu
from layers.neuron.spec import NEURON_KEY, parse as parse_neuron
from layers.registry import register

ROWS = ("mean", "var", "invstd", "scale")     # rows of the per-channel "stats" workspace


@register
class BatchNormLayer(Layer):
    type = "batchnorm"
    examples = ({}, {"eps": 1e-3, "momentum": 0.2, "neuron": "relu"}, {"neuron": "square"})
    doc = "batch normalisation per channel (per feature after an fc), PyTorch's BatchNorm2d/1d"
    whole_batch = True
    keys = {
        "eps": Key(float, 1e-5, low=0.0, low_open=True, doc="added to the variance before its square root"),
        "momentum": Key(float, 0.1, low=0.0, high=1.0,
                        doc="weight of the batch in the running statistics (PyTorch's convention)"),
        "neuron": NEURON_KEY,
        "lr_w": LR_W_KEY,
        "lr_b": LR_B_KEY,
        "wd": WD_KEY,
    }

    def setup(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise LayerError("inputs", f"needs a [C, H, W] or [D] input, got {list(input_shape)}")
        self.act = parse_neuron(self.cfg["neuron"])
        self.channels = int(input_shape[0])
        self.pixels = int(np.prod(input_shape[1:], dtype=np.int64))    # 1 after an fc
        self._train = None
        return input_shape

    def param_shapes(self):
        return {"weight": (self.channels,), "bias": (self.channels,)}

    def init_params(self, rng):
        return {"weight": np.ones(self.channels, np.float32), "bias": np.zeros(self.channels, np.float32)}

    def state_shapes(self):
        return {"running_mean": (self.channels,), "running_var": (self.channels,)}

    def init_state(self):
        return {"running_mean": np.zeros(self.channels, np.float32),
                "running_var": np.ones(self.channels, np.float32)}

    def macs(self):
        return self.channels * self.pixels       # one multiply-add per value

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = {"y": ("activation", (n,) + self.output_shape),
               "stats": ("workspace", (len(ROWS), self.channels))}
        if backward:
            out.update(dweight=("param_grad", (self.channels,)), dbias=("param_grad", (self.channels,)))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    def _view(self, a):
        return a.reshape(a.shape[0], self.channels, self.pixels)

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        if train and n * self.pixels < 2:
            raise ValueError(f"batchnorm '{self.name}': training needs more than one value per channel "
                             f"(a batch of {n} x {self.pixels} pixels); use a larger batch")
        b = self.buffers(n, "forward", train)
        y, stats = b["y"], b["stats"]
        mean, var, invstd, scale = stats
        x3 = self._view(x)
        eps = np.float32(self.eps)
        if train:
            cpu.statistics(x3, mean, var)
            cpu.coefficients(params["weight"], mean, var, eps, mean, var, invstd, scale)
        else:
            cpu.coefficients(params["weight"], params["running_mean"], params["running_var"], eps,
                             mean, var, invstd, scale)
        cpu.apply(*self.act.kernel_args(), x3, mean, scale, params["bias"], self._view(y))
        # the engine leaves a layer's input untouched until its backward: a reference is enough
        self._x3, self._y3, self._stats, self._train = x3, self._view(y), stats, bool(train)
        return y

    def backward(self, dy, params, need_dx=True):
        x3, y3 = self._x3, self._y3
        n = x3.shape[0]
        dy3 = self._view(np.ascontiguousarray(dy, np.float32).reshape(y3.shape))
        b = self.buffers(n, "backward", need_dx=need_dx)
        dw, db = b["dweight"], b["dbias"]
        mean, _, invstd, scale = self._stats
        act = self.act.kernel_args()
        cpu.grad_sums(*act, dy3, y3, x3, mean, invstd, scale, params["bias"], dw, db)
        dx = None
        if need_dx:
            dx = b["dx"]
            cpu.grad_input(*act, dy3, y3, x3, mean, invstd, scale, params["bias"], dw, db,
                           np.float32(1.0 / (n * self.pixels)), self._train, self._view(dx))
        return dx, {"weight": dw, "bias": db}

    def update_state(self, state):
        if not self._train:
            raise RuntimeError(f"batchnorm '{self.name}': update_state needs a training forward first")
        mean, var = self._stats[0], self._stats[1]
        count = self._x3.shape[0] * self.pixels
        cpu.update_running(state["running_mean"], state["running_var"], mean, var,
                           np.float32(self.momentum), np.float32(count / (count - 1)))
