"""The optimizer (one module for every backend) and learning-rate schedules.

cuda-convnet's SGD with momentum and weight decay (the paper's rule):

    v <- momentum * v - wd * lr * w - lr * dL/dw
    w <- w + v

with per-layer multipliers of lr and wd (cuda-convnet's epsW / epsB / wc); biases get no
weight decay, as in cuda-convnet. The state (momentum) lives once, on the net's backend.
A new optimizer is a subclass of `Optimizer` here with a CPU update kernel and a CUDA
twin (in engine/solver_cuda.py, imported only on CUDA): `state` names its per-parameter
arrays, `scalars` its per-parameter constants.
"""
import math

import numba
import numpy as np

from layers import threads


@threads.kernel
def sgd_update(w, v, g, lr, momentum, decay):
    """One fused pass over flat float32 arrays: v = m v - decay lr w - lr g; w += v."""
    n = w.size
    chunk = 16384
    for c in numba.prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            vi = momentum * v[i] - decay * lr * w[i] - lr * g[i]
            v[i] = vi
            w[i] += vi


def multipliers_of(net):
    """{"<layer>.<param>": (lr multiplier, weight-decay multiplier)} from the layers'
    lr_w / lr_b / wd keys; biases get no weight decay."""
    mult = {}
    for node in net.layers:
        s = node.spec.solver
        for pname in node.layer.param_shapes():
            if pname == "bias":
                mult[f"{node.name}.{pname}"] = (s.get("lr_b", 1.0), 0.0)
            else:
                mult[f"{node.name}.{pname}"] = (s.get("lr_w", 1.0), s.get("wd", 1.0))
    return mult


class Optimizer:
    """Updates parameters in place on their backend. `multipliers[key] = (lr_mult, wd_mult)`."""

    state = ()            # names of the per-parameter state arrays, saved as "<name>/<key>"
    cpu_kernel = None     # kernel(w, *state, g, *scalars) on flat float32 arrays
    cuda_kernel = None    # "module:name" of its CUDA twin

    def __init__(self, params, multipliers=None, backend=None):
        from engine.cpu_backend import CpuBackend
        self.params = params
        self.multipliers = multipliers or {}
        self.backend = backend if backend is not None else CpuBackend()
        self.arrays = {name: {k: self.backend.zeros(p.shape) for k, p in params.items()} for name in self.state}

    @classmethod
    def for_net(cls, net, *args, **kwargs):
        return cls(net.backend.params, *args, multipliers=multipliers_of(net), backend=net.backend, **kwargs)

    def scalars(self, lr, lr_mult, wd_mult):
        raise NotImplementedError

    def step(self, grads, lr):
        for key, w in self.params.items():
            lr_mult, wd_mult = self.multipliers.get(key, (1.0, 1.0))
            if lr_mult == 0.0:
                continue   # a frozen layer (cuda-convnet: epsW = 0)
            arrays = [w] + [self.arrays[name][key] for name in self.state] + [grads[key]]
            self.backend.update(self, key, arrays, self.scalars(lr, lr_mult, wd_mult))

    def state_arrays(self):
        """Host copies, keyed "<state>/<key>" (as checkpoints store them)."""
        return {f"{name}/{k}": self.backend.to_host(v) for name in self.state for k, v in self.arrays[name].items()}

    def load_state_arrays(self, arrays):
        for name in self.state:
            for k, v in self.arrays[name].items():
                new = np.ascontiguousarray(arrays[f"{name}/{k}"], np.float32)
                if new.shape != tuple(v.shape):
                    raise ValueError(f"'{name}/{k}': shape {list(new.shape)} does not fit {list(v.shape)}")
                if isinstance(v, np.ndarray):
                    v[...] = new
                else:
                    v.copy_to_device(new)


class SGD(Optimizer):
    state = ("velocity",)
    cpu_kernel = sgd_update
    cuda_kernel = "engine.solver_cuda:sgd_update"

    def __init__(self, params, momentum=0.9, weight_decay=0.0005, multipliers=None, backend=None):
        super().__init__(params, multipliers, backend)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    @property
    def velocity(self):
        return self.arrays["velocity"]

    def scalars(self, lr, lr_mult, wd_mult):
        return lr * lr_mult, self.momentum, self.weight_decay * wd_mult


class Schedule:
    """Learning rate as a function of training progress.

    kinds:
      constant                      lr
      step     epochs: [e1, ...]    lr * factor^(number of e_i <= epoch)      (factor 0.1)
      exp      factor: t            lr * t^(-progress), progress in [0, 1)    (cuda-convnet2 exp)
      linear   factor: t            from lr down to lr / t in a straight line  (cuda-convnet2 linear)
      dexp     factor: t, steps: n  n constant levels lr * t^(-i/(n-1)), switching at progress i/n
      plateau  patience: p          lr * factor each time validation error has not improved
                                    by `threshold` for p epochs                (factor 0.1)
    """

    KINDS = ("constant", "step", "exp", "linear", "dexp", "plateau")

    def __init__(self, base_lr, kind="constant", epochs=None, factor=None, steps=4,
                 patience=2, threshold=1e-3, total_epochs=1):
        self.base_lr = float(base_lr)
        self.kind = kind
        self.milestones = sorted(epochs or [])
        self.factor = float(factor if factor is not None else (100.0 if kind in ("exp", "linear", "dexp")
                                                               else 0.1))
        self.steps = int(steps)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.total_epochs = int(total_epochs)
        # plateau state
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0

    def lr(self, epoch, fraction=0.0):
        """lr during epoch `epoch` (0-based) after `fraction` of its batches."""
        progress = min(max((epoch + fraction) / max(self.total_epochs, 1), 0.0), 1.0)
        if self.kind == "step":
            return self.base_lr * self.factor ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "exp":
            return self.base_lr * self.factor ** (-progress)
        if self.kind == "linear":
            return self.base_lr * (1.0 - progress * (1.0 - 1.0 / self.factor))
        if self.kind == "dexp":
            level = min(int(progress * self.steps), self.steps - 1)
            return self.base_lr * self.factor ** (-level / max(self.steps - 1, 1))
        if self.kind == "plateau":
            return self.base_lr * self.scale
        return self.base_lr

    def observe(self, val_error):
        """Tell the schedule an epoch's validation error (only `plateau` uses it)."""
        if self.kind != "plateau" or val_error is None:
            return
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0

    def state(self):
        return {"scale": self.scale, "best": None if math.isinf(self.best) else self.best,
                "bad_epochs": self.bad_epochs}

    def load_state(self, state):
        self.scale = float(state["scale"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
