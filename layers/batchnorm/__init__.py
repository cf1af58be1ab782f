"""`batchnorm`: batch normalisation (Ioffe & Szegedy 2015) with PyTorch's conventions.

Per channel after a conv (input [C, H, W]: statistics over N*H*W values), per feature after
an fc (input [D]). Training normalises by the batch's mean and biased variance; evaluation
(Net.forward, validation) by the running statistics. y = f(weight * xhat + bias), `neuron`
fused. Parameters `weight` (init 1) and `bias` (init 0), with the solver's lr_w / lr_b / wd
multipliers (the weights decay unless wd says otherwise, as in PyTorch; biases never do,
as every bias here). State `running_mean` (init 0) and `running_var` (init 1): updated after
the forward of each training step as PyTorch does, running = (1 - momentum) running +
momentum batch, the variance unbiased (M / (M - 1), M = N*H*W).

Statistics of the whole batch (`whole_batch`): a global batch cut into parts (over
data-parallel processes, or the halves of the CPU's threading "batch") is normalised by its
global statistics through `batch_sum` (Layer.batch_sum): the per-channel sums and the value
count, then the squared deviations from the global mean, each summed over the parts (two
passes, as in one process); backward sums the parts' dbias and dweight the same way (see
`backward`).
"""
import numpy as np

from layers.base import LR_B_KEY, LR_W_KEY, WD_KEY, Key, Layer, LayerError
from layers.batchnorm import cpu
from layers.channel_sums import channel_sums
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
        summed = train and self.batch_sum is not None
        if summed:
            out["sums"] = ("workspace", self._sums_shape())
        if backward:
            out.update(dweight=("param_grad", (self.channels,)), dbias=("param_grad", (self.channels,)))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
                if summed:       # dbias, dweight summed over the parts of the global batch
                    out["global_sums"] = ("workspace", (2, self.channels))
        return out

    def _sums_shape(self):
        """float32 room for the float64 values batch_sum sums: 2C + 1 (C sums and the count;
        dbias and dweight in backward)."""
        return (2 * (2 * self.channels + 1),)

    def host_sums(self):
        """The float64 array batch_sum sums in place (the "sums" workspace seen as float64)."""
        return self.buffer("sums", self._sums_shape()).view(np.float64)

    def check_count(self, count):
        """ValueError unless a training batch has more than one value per channel."""
        if count < 2:
            raise ValueError(f"batchnorm '{self.name}': training needs more than one value per channel "
                             f"(a batch of {count // self.pixels} x {self.pixels} pixels); use a larger batch")

    def global_mean(self, total, count, mean):
        """mean (float32) from the summed [C sums, count]; checks the count."""
        self.check_count(count)
        np.divide(total[:self.channels], count, out=mean)

    def shares_of_sums(self, dweight, dbias, count, local):
        """The float64 [dbias, dweight] of this part, each scaled by its share of the global
        batch (local / count values), in host_sums() for batch_sum: their sum over the parts
        is the single process's sums, since each part's gradients are of its own mean loss."""
        c = self.channels
        both = self.host_sums()[:2 * c]
        np.multiply(dbias, local / count, out=both[:c])
        np.multiply(dweight, local / count, out=both[c:])
        return both

    def _view(self, a):
        return a.reshape(a.shape[0], self.channels, self.pixels)

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        if train and self.batch_sum is None:
            self.check_count(n * self.pixels)
        b = self.buffers(n, "forward", train)
        y, stats = b["y"], b["stats"]
        mean, var, invstd, scale = stats
        x3 = self._view(x)
        eps = np.float32(self.eps)
        self._count = n * self.pixels
        if train and self.batch_sum is not None:
            self._count = self._global_statistics(x3, mean, var)
        elif train:
            cpu.statistics(x3, mean, var)
        if train:
            cpu.coefficients(params["weight"], mean, var, eps, mean, var, invstd, scale)
        else:
            cpu.coefficients(params["weight"], params["running_mean"], params["running_var"], eps,
                             mean, var, invstd, scale)
        cpu.apply(*self.act.kernel_args(), x3, mean, scale, params["bias"], self._view(y))
        # the engine leaves a layer's input untouched until its backward: a reference is enough
        self._x3, self._y3, self._stats, self._train = x3, self._view(y), stats, bool(train)
        return y

    def _global_statistics(self, x3, mean, var):
        """mean and biased var of the global batch (batch_sum over its parts); returns its
        count of values per channel."""
        c = self.channels
        total = self.host_sums()[:c + 1]
        channel_sums(x3, total)
        total[c] = x3.shape[0] * self.pixels
        self.batch_sum(total)
        count = int(total[c])
        self.global_mean(total, count, mean)
        deviations = total[:c]
        cpu.squared_deviations(x3, mean, deviations)
        self.batch_sum(deviations)
        np.divide(deviations, count, out=var)
        return count

    def backward(self, dy, params, need_dx=True):
        x3, y3 = self._x3, self._y3
        n = x3.shape[0]
        dy3 = self._view(np.ascontiguousarray(dy, np.float32).reshape(y3.shape))
        b = self.buffers(n, "backward", self._train, need_dx=need_dx)
        dw, db = b["dweight"], b["dbias"]
        mean, _, invstd, scale = self._stats
        act = self.act.kernel_args()
        cpu.grad_sums(*act, dy3, y3, x3, mean, invstd, scale, params["bias"], dw, db)
        dx = None
        if need_dx:
            dx = b["dx"]
            sum_w, sum_b, local = dw, db, n * self.pixels
            if self._train and self.batch_sum is not None:
                # dx = scale (dz - S_b/M_r - xhat S_w/M_r): S the global batch's sums in units of
                # its mean loss, M_r this part's count; in units of this part's mean loss (the
                # exchange scales by local / count) that is the single process's dx. Parts
                # whose dz carry their share already (parts_weighted) sum theirs as they
                # are and divide by the global count M: dz - S_b/M - xhat S_w/M
                if self.parts_weighted:
                    local = self._count
                both = self.shares_of_sums(dw, db, self._count, local)
                self.batch_sum(both)
                sum_b, sum_w = b["global_sums"]
                np.copyto(sum_b, both[:self.channels], casting="same_kind")
                np.copyto(sum_w, both[self.channels:], casting="same_kind")
            cpu.grad_input(*act, dy3, y3, x3, mean, invstd, scale, params["bias"], sum_w, sum_b,
                           np.float32(1.0 / max(local, 1)), self._train, self._view(dx))
        return dx, {"weight": dw, "bias": db}

    def update_state(self, state):
        if not self._train:
            raise RuntimeError(f"batchnorm '{self.name}': update_state needs a training forward first")
        mean, var = self._stats[0], self._stats[1]
        count = self._count          # the global batch's, where it is cut over processes
        cpu.update_running(state["running_mean"], state["running_var"], mean, var,
                           np.float32(self.momentum), np.float32(count / (count - 1)))
