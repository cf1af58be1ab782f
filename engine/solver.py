"""The optimizers (one module for every backend) and learning-rate schedules.

Every optimizer takes the per-layer multipliers of lr and wd (cuda-convnet's epsW / epsB /
wc: lr_eff = lr * lr_mult, wd_eff = weight_decay * wd_mult); biases get no weight decay,
as in cuda-convnet; a layer with lr_mult 0 is frozen (not updated, not in the clip norm).
Its state lives once, on the net's backend.

  sgd       cuda-convnet's rule (the paper's):   v <- m v - wd_eff lr_eff w - lr_eff g;  w <- w + v
  nesterov  the same velocity, then a look-ahead step:
                                       v <- m v - lr_eff (g + wd_eff w);  w <- w + m v - lr_eff (g + wd_eff w)
            (w is the weight before the step). With a constant lr this is PyTorch's
            SGD(nesterov=True, dampening=0) exactly, whose buffer b = -v / lr; like our sgd,
            the velocity holds lr-scaled steps, so a change of lr acts on new gradients only.
  adam      PyTorch's Adam, weight decay added to the gradient (g <- g + wd_eff w):
                m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2
                w <- w - (lr_eff / (1 - b1^t)) m / (sqrt(s) / sqrt(1 - b2^t) + eps)
  adamw     PyTorch's AdamW: the same with decoupled decay w <- w (1 - lr_eff wd_eff) first
            and g left alone.

Per input (cuda-convnet's per-input epsW / momW): `lr_w` and `mom_w` (the weights' momentum
in place of train.momentum; sgd and nesterov) may be lists, one value per input of a layer
whose weight reads its joined input along axis 1 (fc: [outputs, features], conv without
groups: [filters, channels, k, k]); each input's part of the weight (its columns) is then
updated with its own values, row by row (one kernel call per weight row and input). Nets
without lists run the same calls as before, bit for bit.

`clip_norm`: before any update the gradients of every parameter the optimizer moves are
scaled by min(1, clip_norm / (norm + 1e-6)), norm the global L2 norm over all of them (as
torch.nn.utils.clip_grad_norm_). The norms (before clipping) are tallied for the epoch line.

A new optimizer is a subclass of `Optimizer` here with a CPU update kernel and a CUDA twin
(in engine/solver_cuda.py, imported only on CUDA): `state` names its per-parameter arrays,
`scalars` its per-parameter constants; both backends run it through `backend.update`.
"""
import math

import numba
import numpy as np

from layers import threads
from layers.threads import CHUNK, chunk_slice, chunks  # CHUNK: also the clip norm's partial sums


@threads.kernel
def sgd_update(w, v, g, lr, momentum, decay):
    """One fused pass over flat float32 arrays: v = m v - decay lr w - lr g; w += v."""
    n = w.size
    for c in numba.prange(chunks(n)):
        span = chunk_slice(c, n)
        ws, vs, gs = w[span], v[span], g[span]
        for i in range(ws.size):
            vi = momentum * vs[i] - decay * lr * ws[i] - lr * gs[i]
            vs[i] = vi
            ws[i] += vi


@threads.kernel
def nesterov_update(w, v, g, lr, momentum, decay):
    """step = lr (g + decay w); v = m v - step; w += m v - step."""
    n = w.size
    for c in numba.prange(chunks(n)):
        span = chunk_slice(c, n)
        ws, vs, gs = w[span], v[span], g[span]
        for i in range(ws.size):
            step = lr * (gs[i] + decay * ws[i])
            vi = momentum * vs[i] - step
            vs[i] = vi
            ws[i] += momentum * vi - step


@threads.kernel
def adam_update(w, m, s, g, step_size, beta1, beta2, one_minus_beta1, one_minus_beta2, bc2_sqrt, eps,
                l2, shrink):
    """Adam (l2 = wd, shrink = 1) or AdamW (l2 = 0, shrink = 1 - lr wd) on flat arrays:
    w *= shrink; g' = g + l2 w; m, s moving averages of g', g'^2;
    w -= step_size m / (sqrt(s) / bc2_sqrt + eps)."""
    n = w.size
    for c in numba.prange(chunks(n)):
        span = chunk_slice(c, n)
        ws, ms, ss, gs = w[span], m[span], s[span], g[span]
        for i in range(ws.size):
            wi = ws[i] * shrink
            gi = gs[i] + l2 * wi
            mi = beta1 * ms[i] + one_minus_beta1 * gi
            si = beta2 * ss[i] + one_minus_beta2 * gi * gi
            ms[i] = mi
            ss[i] = si
            ws[i] = wi - step_size * mi / (np.sqrt(si) / bc2_sqrt + eps)


@threads.kernel
def sum_squares(g, partials):
    """partials[j] = sum of g^2 over the j-th of partials.size equal chunks of g (float64 inside)."""
    n, p = g.size, partials.size
    chunk = (n + p - 1) // p
    for j in numba.prange(p):
        acc = 0.0
        gs = g[j * chunk:min(n, (j + 1) * chunk)]      # a slice, looped from 0: see chunk_slice
        for i in range(gs.size):
            acc += np.float64(gs[i]) * gs[i]
        partials[j] = acc


@threads.kernel
def scale_grad(g, factor):
    n = g.size
    for c in numba.prange(chunks(n)):
        gs = g[chunk_slice(c, n)]
        for i in range(gs.size):
            gs[i] *= factor


class _Pass:
    """A kernel over gradients run by `backend.update` like an optimizer's (which caches the
    CUDA kernel by the type of what it is given: one class per kernel)."""


class _SumSquares(_Pass):
    cpu_kernel = sum_squares
    cuda_kernel = "engine.solver_cuda:sum_squares"


class _ScaleGrad(_Pass):
    cpu_kernel = scale_grad
    cuda_kernel = "engine.solver_cuda:scale_grad"


SUM_SQUARES, SCALE_GRAD = _SumSquares(), _ScaleGrad()


class PerInput:
    """The multipliers of a weight with a value per input: its axis 1 split into the inputs'
    widths, one lr multiplier and one momentum (None: the optimizer's) per input."""

    def __init__(self, widths, lr_mults, wd_mult, momenta):
        self.widths, self.lr_mults, self.momenta = list(widths), list(lr_mults), list(momenta)
        self.wd_mult = wd_mult

    def __eq__(self, other):
        return isinstance(other, PerInput) and vars(self) == vars(other)

    def __getitem__(self, i):        # m[0] != 0: moving unless every input is frozen
        if i != 0:
            raise IndexError(i)
        return max(self.lr_mults)


def _per_input(net, node, lr, wd, mom, weight_shape):
    """PerInput for a weight whose lr_w or mom_w is a list, or ConfigError naming the key."""
    from engine.errors import ConfigError
    layer, n = node.layer, len(node.layer.input_shapes)
    key = "lr_w" if isinstance(lr, list) else "mom_w"
    widths = [math.prod(s) if layer.join == "flat" else s[0] for s in layer.input_shapes]
    if layer.join not in ("flat", "concat") or len(weight_shape) < 2 or weight_shape[1] != sum(widths):
        raise ConfigError(f"a list (one value per input) needs a weight that reads the joined inputs along "
                          f"its axis 1 (fc, conv without groups or channel_sets); this {node.type} weight is "
                          f"{list(weight_shape)} for inputs of widths {widths}: give one number",
                          file=getattr(net.spec, "file", None), line=node.spec.line(key), layer=node.name,
                          key=key)
    lrs = lr if isinstance(lr, list) else [lr] * n
    moms = mom if isinstance(mom, list) else [mom] * n
    return PerInput(widths, lrs, wd, moms)


def multipliers_of(net):
    """{"<layer>.<param>": (lr multiplier, weight-decay multiplier)} from the layers'
    lr_w / lr_b / wd keys; biases get no weight decay. A weight with mom_w gets a third
    entry, its momentum; one with a list lr_w or mom_w a PerInput."""
    mult = {}
    for node in net.layers:
        s = node.spec.solver
        for pname, shape in node.layer.param_shapes().items():
            if pname == "bias":
                mult[f"{node.name}.{pname}"] = (s.get("lr_b", 1.0), 0.0)
                continue
            lr, wd, mom = s.get("lr_w", 1.0), s.get("wd", 1.0), s.get("mom_w")
            if isinstance(lr, list) or isinstance(mom, list):
                mult[f"{node.name}.{pname}"] = _per_input(net, node, lr, wd, mom, shape)
            else:
                mult[f"{node.name}.{pname}"] = (lr, wd) if mom is None else (lr, wd, mom)
    return mult


class Optimizer:
    """Updates parameters in place on their backend. `multipliers[key] = (lr_mult, wd_mult)`."""

    state = ()            # names of the per-parameter state arrays, saved as "<name>/<key>"
    cpu_kernel = None     # kernel(w, *state, g, *scalars) on flat float32 arrays
    cuda_kernel = None    # "module:name" of its CUDA twin
    NORM_TALLY = "clip/grad_norm"     # [sum of the pre-clip norms, steps] since take_grad_norm()

    def __init__(self, params, multipliers=None, backend=None, clip_norm=None):
        from engine.cpu_backend import CpuBackend
        self.params = params
        self.multipliers = multipliers or {}
        self.backend = backend if backend is not None else CpuBackend()
        self.arrays = {name: {k: self.backend.zeros(p.shape) for k, p in params.items()} for name in self.state}
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.norm_tally = np.zeros(2, np.float64)
        self._partials = None

    @classmethod
    def for_net(cls, net, *args, **kwargs):
        return cls(net.backend.params, *args, multipliers=multipliers_of(net), backend=net.backend, **kwargs)

    def scalars(self, lr, lr_mult, wd_mult, momentum=None):
        """The kernel's scalars; momentum: a layer's own (mom_w), else the optimizer's."""
        raise NotImplementedError

    def moving(self):
        """The keys this step updates (a layer with lr multiplier 0 is frozen)."""
        return [k for k in self.params if self.multipliers.get(k, (1.0, 1.0))[0] != 0.0]

    def step(self, grads, lr):
        keys = self.moving()
        if self.clip_norm is not None:
            self.clip(grads, keys)
        self.begin_step()
        for key in keys:
            mult = self.multipliers.get(key, (1.0, 1.0))
            arrays = [self.params[key]] + [self.arrays[name][key] for name in self.state] + [grads[key]]
            if isinstance(mult, PerInput):
                self._step_per_input(key, mult, arrays, lr)
            else:
                self.backend.update(self, key, arrays, self.scalars(lr, *mult))

    def _step_per_input(self, key, mult, arrays, lr):
        """Each input's columns of each row (contiguous) with that input's scalars."""
        rows = arrays[0].shape[0]
        inner = math.prod(arrays[0].shape[2:])
        mats = [a.reshape(rows, a.size // rows) for a in arrays]
        start = 0
        for width, lr_mult, momentum in zip(mult.widths, mult.lr_mults, mult.momenta):
            c0, c1 = start * inner, (start + width) * inner
            start += width
            if lr_mult == 0.0:
                continue           # this input's part is frozen
            scalars = self.scalars(lr, lr_mult, mult.wd_mult, momentum)
            for r in range(rows):
                self.backend.update(self, key, [m[r, c0:c1] for m in mats], scalars)

    def begin_step(self):
        """Called once per step before the updates (Adam counts its steps here)."""

    # ---- gradient-norm clipping ---------------------------------------------------
    def grad_norm(self, grads, keys):
        """The global L2 norm of grads[keys]: per-chunk sums of squares on the backend (a
        fixed split, so the same on every run), one read back, summed in float64."""
        if self._partials is None:
            counts = [max(1, -(-grads[k].size // CHUNK)) for k in keys]
            total = self.backend.zeros((sum(counts),))
            offsets = np.concatenate([[0], np.cumsum(counts)])
            self._partials = (total, {k: total[offsets[i]:offsets[i + 1]] for i, k in enumerate(keys)})
        total, views = self._partials
        for k in keys:
            self.backend.update(SUM_SQUARES, k, [grads[k], views[k]], ())
        return math.sqrt(float(np.sum(self.backend.to_host(total), dtype=np.float64)))

    def clip(self, grads, keys):
        norm = self.grad_norm(grads, keys)
        self.norm_tally += (norm, 1.0)
        coef = self.clip_norm / (norm + 1e-6)
        if coef < 1.0:
            for k in keys:
                self.backend.update(SCALE_GRAD, k, [grads[k]], (coef,))
        return norm

    def take_grad_norm(self):
        """The mean pre-clip gradient norm over the steps since the last call (None without
        clip_norm, or with no step); starts a new tally."""
        total, steps = self.norm_tally
        self.norm_tally = np.zeros(2, np.float64)
        return None if self.clip_norm is None or not steps else float(total / steps)

    # ---- checkpoints ----------------------------------------------------------------
    def state_arrays(self):
        """Host copies, keyed "<state>/<key>" (as checkpoints store them), and the counters."""
        out = {f"{name}/{k}": self.backend.to_host(v) for name in self.state for k, v in self.arrays[name].items()}
        out[self.NORM_TALLY] = self.norm_tally.copy()
        out.update(self.counters())
        return out

    def counters(self):
        """{name: float64 array} of scalar state besides the arrays (Adam's step count)."""
        return {}

    def load_counters(self, arrays):
        pass

    def load_state_arrays(self, arrays):
        for name in self.state:
            for k, v in self.arrays[name].items():
                if f"{name}/{k}" not in arrays:
                    held = sorted({a.split("/")[0] for a in arrays if "/" in a} - {"param", "clip"})
                    raise ValueError(f"holds no '{name}/{k}' ({type(self).__name__.lower()} state); it has "
                                     f"{', '.join(held) or 'no optimizer state'}: trained with another "
                                     "optimizer? (train.optimizer)")
                new = np.ascontiguousarray(arrays[f"{name}/{k}"], np.float32)
                if new.shape != tuple(v.shape):
                    raise ValueError(f"'{name}/{k}': shape {list(new.shape)} does not fit {list(v.shape)}")
                if isinstance(v, np.ndarray):
                    v[...] = new
                else:
                    v.copy_to_device(new)
        # a checkpoint saved without clipping has no tally: it starts at zero
        self.norm_tally = np.array(arrays.get(self.NORM_TALLY, np.zeros(2)), np.float64).reshape(2)
        self.load_counters(arrays)


class SGD(Optimizer):
    state = ("velocity",)
    cpu_kernel = sgd_update
    cuda_kernel = "engine.solver_cuda:sgd_update"

    def __init__(self, params, momentum=0.9, weight_decay=0.0005, multipliers=None, backend=None,
                 clip_norm=None):
        super().__init__(params, multipliers, backend, clip_norm)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    @property
    def velocity(self):
        return self.arrays["velocity"]

    def scalars(self, lr, lr_mult, wd_mult, momentum=None):
        return lr * lr_mult, self.momentum if momentum is None else momentum, self.weight_decay * wd_mult


class Nesterov(SGD):
    cpu_kernel = nesterov_update
    cuda_kernel = "engine.solver_cuda:nesterov_update"


class Adam(Optimizer):
    state = ("exp_avg", "exp_avg_sq")
    cpu_kernel = adam_update
    cuda_kernel = "engine.solver_cuda:adam_update"
    STEP = "adam/step"
    decoupled = False       # AdamW: decay the weights by lr wd, not through the gradient

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, multipliers=None,
                 backend=None, clip_norm=None):
        super().__init__(params, multipliers, backend, clip_norm)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0

    def begin_step(self):
        self.t += 1

    def scalars(self, lr, lr_mult, wd_mult, momentum=None):       # no momentum: mom_w does not apply
        lr_eff, wd_eff = lr * lr_mult, self.weight_decay * wd_mult
        step_size = lr_eff / (1.0 - self.beta1 ** self.t)
        bc2_sqrt = math.sqrt(1.0 - self.beta2 ** self.t)
        l2, shrink = (0.0, 1.0 - lr_eff * wd_eff) if self.decoupled else (wd_eff, 1.0)
        # 1 - beta in float64, as torch passes it: 1 - 0.999 in float32 is off by 5e-5
        return step_size, self.beta1, self.beta2, 1.0 - self.beta1, 1.0 - self.beta2, bc2_sqrt, self.eps, l2, shrink

    def counters(self):
        return {self.STEP: np.array([self.t], np.float64)}

    def load_counters(self, arrays):
        if self.STEP not in arrays:
            raise ValueError(f"holds no '{self.STEP}' (the Adam step count): trained with another optimizer?")
        self.t = int(arrays[self.STEP].reshape(-1)[0])


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, multipliers=None,
                 backend=None, clip_norm=None):
        super().__init__(params, betas, eps, weight_decay, multipliers, backend, clip_norm)


OPTIMIZERS = {"sgd": SGD, "nesterov": Nesterov, "adam": Adam, "adamw": AdamW}


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
      cosine   warmup_epochs: W, warmup_start: s, min_lr: m   (0, 0, 0; W may be fractional)
               t = epoch + fraction, T = total epochs:
               t < W    lr * (s + (1 - s) t / W)              linear warm-up from lr * s
               t >= W   m + (lr - m) (1 + cos(pi (t - W) / (T - W))) / 2   down to m at T
    """

    KINDS = ("constant", "step", "exp", "linear", "dexp", "plateau", "cosine")

    def __init__(self, base_lr, kind="constant", epochs=None, factor=None, steps=4,
                 patience=2, threshold=1e-3, total_epochs=1, warmup_epochs=0.0, warmup_start=0.0,
                 min_lr=0.0):
        self.base_lr = float(base_lr)
        self.kind = kind
        self.milestones = sorted(epochs or [])
        self.factor = float(factor if factor is not None else (100.0 if kind in ("exp", "linear", "dexp")
                                                               else 0.1))
        self.steps = int(steps)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.total_epochs = int(total_epochs)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start = float(warmup_start)
        self.min_lr = float(min_lr)
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
        if self.kind == "cosine":
            return self._cosine(epoch + fraction)
        return self.base_lr

    def _cosine(self, t):
        w, total = self.warmup_epochs, max(self.total_epochs, 1)
        if t < w:
            return self.base_lr * (self.warmup_start + (1.0 - self.warmup_start) * t / w)
        p = min((t - w) / max(total - w, 1e-12), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * p)) / 2.0

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
