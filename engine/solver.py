"""Mini-batch SGD with momentum and weight decay (the paper's rule), and learning-rate schedules.

    v <- momentum * v - wd * lr * w - lr * dL/dw
    w <- w + v

with per-layer multipliers of lr and wd (cuda-convnet's epsW / epsB / wc); biases get no
weight decay, as in cuda-convnet.
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


class SGD:
    """Updates a net's parameters in place. `multipliers[key] = (lr_mult, wd_mult)`."""

    def __init__(self, params, momentum=0.9, weight_decay=0.0005, multipliers=None):
        self.params = params
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.multipliers = multipliers or {}
        self.velocity = {k: np.zeros_like(p) for k, p in params.items()}

    @classmethod
    def for_net(cls, net, momentum=0.9, weight_decay=0.0005):
        mult = {}
        for node in net.layers:
            s = node.spec.solver
            for pname in node.layer.param_shapes():
                if pname == "bias":
                    mult[f"{node.name}.{pname}"] = (s.get("lr_b", 1.0), 0.0)
                else:
                    mult[f"{node.name}.{pname}"] = (s.get("lr_w", 1.0), s.get("wd", 1.0))
        return cls(net.parameters(), momentum, weight_decay, mult)

    def step(self, grads, lr):
        for key, w in self.params.items():
            lr_mult, wd_mult = self.multipliers.get(key, (1.0, 1.0))
            if lr_mult == 0.0:
                continue   # a frozen layer (cuda-convnet: epsW = 0)
            g = np.ascontiguousarray(grads[key], dtype=np.float32)
            sgd_update(w.reshape(-1), self.velocity[key].reshape(-1), g.reshape(-1),
                       np.float32(lr * lr_mult), np.float32(self.momentum),
                       np.float32(self.weight_decay * wd_mult))

    def state_arrays(self):
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_arrays(self, arrays):
        for k, v in self.velocity.items():
            v[...] = arrays[f"velocity/{k}"]


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
