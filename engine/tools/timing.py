"""`python -m engine time NET.yaml`: Caffe's `caffe time` for a net of this engine.

Random input (standard normal) and random labels, a few warm-up iterations (the first
pays for any Numba compile and the buffers' allocation; none of them is counted), then
`iterations` training steps run by the executor layer by layer in graph order on one
lane, each layer's `forward` and `backward` timed on its own by the backend's clock (its
`timer` hook; so two columns never overlap here). The cost and the SGD update are timed
too. Then the same number of whole steps exactly as the trainer runs them
(`net.loss_and_grads` + `SGD.step`; with `train=False`, `net.forward`) give the figure
that counts: milliseconds per batch, images/s and GFLOP/s.

FLOPs: 2 per multiply-add of every layer's `macs()` (the `summary` column: conv and fc
products, and the window reads of pool and the normalisations), times 3 for a training
step (forward, gradient w.r.t. the input, gradient w.r.t. the weights), as is customary.

Timer overhead: the median cost of an empty timed region (two clock reads) is measured
first and subtracted from every timed region (clamped at 0).

On CUDA the backend's clock is a pair of CUDA events on the layer's stream with a
synchronisation after every layer. Whole steps are timed between the backend's
synchronisations.
"""
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ConfigError

LR = 1e-3                   # small enough that random labels do not blow a net up over a run
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4


@dataclass
class LayerTime:
    name: str
    type: str
    gpu: int
    macs: int               # forward multiply-adds per image
    forward_ms: float       # mean over the timed iterations
    backward_ms: float      # 0 when not training (or a layer without backward work)


@dataclass
class Timing:
    """What `measure` found; times are means over `iterations`, in milliseconds per batch."""
    net: str
    device: str
    batch: int
    iterations: int
    warmup: int
    train: bool
    layers: list = field(default_factory=list)
    cost_ms: float = 0.0        # the cost layer's cost() (CPU, training)
    update_ms: float = 0.0      # SGD.step over every parameter (CPU, training)
    step_ms: float = 0.0        # one whole step as the trainer (or net.forward) runs it
    step_ms_min: float = 0.0
    step_ms_max: float = 0.0
    overhead_us: float = 0.0    # the empty timed region's cost, subtracted
    notes: list = field(default_factory=list)

    @property
    def forward_ms(self):
        return sum(t.forward_ms for t in self.layers)

    @property
    def backward_ms(self):
        return sum(t.backward_ms for t in self.layers)

    @property
    def macs_per_image(self):
        return sum(t.macs for t in self.layers)

    @property
    def flops_per_batch(self):
        return 2 * self.macs_per_image * self.batch * (3 if self.train else 1)

    @property
    def images_per_s(self):
        return self.batch / (self.step_ms / 1e3) if self.step_ms > 0 else float("inf")

    @property
    def gflops(self):
        return self.flops_per_batch / (self.step_ms / 1e3) / 1e9 if self.step_ms > 0 else float("inf")

    def to_dict(self):
        out = {k: getattr(self, k) for k in ("net", "device", "batch", "iterations", "warmup", "train",
                                             "cost_ms", "update_ms", "step_ms", "step_ms_min",
                                             "step_ms_max", "overhead_us", "notes", "forward_ms",
                                             "backward_ms", "macs_per_image", "images_per_s", "gflops")}
        out["layers"] = [vars(t).copy() for t in self.layers]
        return out


class Clock:
    """perf_counter regions with the empty region's cost taken off."""

    def __init__(self, samples=2000):
        empty = []
        for _ in range(samples):
            t = time.perf_counter()
            empty.append(time.perf_counter() - t)
        self.overhead = statistics.median(empty)

    def since(self, t0):
        """Seconds since t0 (a perf_counter() value), less the overhead, never negative."""
        return max(0.0, time.perf_counter() - t0 - self.overhead)


def whole(value, low=1):
    """True for an int (not a bool) >= low."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_batch(batch):
    if not whole(batch):
        raise ValueError(f"batch must be a whole number >= 1, got {batch!r}")
    return batch


def random_batch(net, batch, seed=0):
    """Standard normal float32 images of the net's input shape and random class labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + net.input_shape, dtype=np.float32)
    labels = rng.integers(0, net.num_classes, batch)
    return x, labels


def measure(net, batch=32, iterations=10, warmup=2, train=True, seed=0):
    """Time `net` (an engine Net, on its device) on a random batch; returns a `Timing`."""
    check_batch(batch)
    if not whole(iterations):
        raise ValueError(f"iterations must be a whole number >= 1, got {iterations!r}")
    if not whole(warmup):
        raise ValueError(f"warmup must be a whole number >= 1 (the first pays for compiling), got {warmup!r}")
    if train and not net.output_layer.layer.is_cost:
        out = net.output_layer
        raise ConfigError(f"the net ends in a {out.type} layer ('{out.name}'), not a cost layer "
                          "(softmax): nothing to train; time it with --no-train")
    x, labels = random_batch(net, batch, seed)
    result = Timing(net=net.name, device=net.device, batch=batch, iterations=iterations, warmup=warmup,
                    train=bool(train))
    clock = Clock()
    result.overhead_us = clock.overhead * 1e6
    _measure(net, x, labels, result, clock)
    return result


def _layer_rows(net, fwd, bwd, iterations):
    return [LayerTime(n.name, n.type, int(n.gpu), int(n.layer.macs()),
                      fwd.get(n.name, 0.0) * 1e3 / iterations, bwd.get(n.name, 0.0) * 1e3 / iterations)
            for n in net.layers]


def _whole_steps(step, iterations, clock, sync=None):
    times = []
    for _ in range(iterations):
        if sync:
            sync()
        t = time.perf_counter()
        step()
        if sync:
            sync()
        times.append(clock.since(t) * 1e3)
    return times


def _set_steps(result, times):
    result.step_ms = float(np.mean(times))
    result.step_ms_min, result.step_ms_max = float(min(times)), float(max(times))


def _measure(net, x, labels, result, clock):
    from engine.solver import SGD
    backend = net.backend
    net.check_memory(result.batch, train=result.train)     # refused before anything is allocated
    solver = SGD.for_net(net, MOMENTUM, WEIGHT_DECAY) if result.train else None
    timer, update_s = {}, 0.0
    note = backend.timing_note()
    with np.errstate(all="ignore"):
        try:
            with backend.one_lane():
                for it in range(result.warmup + result.iterations):
                    counted = it >= result.warmup
                    t = timer if counted else {}
                    if not result.train:
                        net.forward(x, timer=t)
                        continue
                    _, grads = net.loss_and_grads(x, labels, train=True, timer=t)
                    backend.synchronize()
                    t0 = time.perf_counter()
                    solver.step(grads, LR)
                    backend.synchronize()
                    if counted:
                        update_s += clock.since(t0)
        except TypeError as e:       # Numba's CUDA simulator: its events take no timing flag
            timer = {}
            note = (f"per-layer times are not available here ({e}); the layer rows show 0, only whole "
                    "steps are timed")
    if note:
        result.notes.append(note)
    seconds = {key: sum(v) for key, v in timer.items()}
    fwd = {name: t for (name, phase), t in seconds.items() if phase == "forward"}
    bwd = {name: t for (name, phase), t in seconds.items() if phase == "backward"}
    result.layers = _layer_rows(net, fwd, bwd, result.iterations)
    result.cost_ms = sum(t for (_, phase), t in seconds.items() if phase == "cost") * 1e3 / result.iterations
    result.update_ms = update_s * 1e3 / result.iterations
    with np.errstate(all="ignore"):
        if result.train:
            def step():
                _, grads = net.loss_and_grads(x, labels, train=True)
                solver.step(grads, LR)
        else:
            def step():
                net.forward(x)
        step()      # the whole-step path may allocate what the layer loop did not
        _set_steps(result, _whole_steps(step, result.iterations, clock, sync=backend.synchronize))


def format_timing(r):
    """The table `python -m engine time` prints."""
    head = ("layer", "type", "gpu", "forward ms", "backward ms", "MFLOP/img")
    rows = [(t.name, t.type, str(t.gpu), f"{t.forward_ms:.3f}", f"{t.backward_ms:.3f}" if r.train else "-",
             f"{2 * t.macs / 1e6:.2f}") for t in r.layers]
    total = ("layers total", "", "", f"{r.forward_ms:.3f}", f"{r.backward_ms:.3f}" if r.train else "-",
             f"{2 * r.macs_per_image / 1e6:.2f}")
    widths = [max(len(x[i]) for x in [head, total] + rows) for i in range(len(head))]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    rule = "-" * len(fmt(head))
    mode = "training (forward + backward + SGD update)" if r.train else "inference (forward)"
    lines = [f"net '{r.net}' on {r.device}: batch {r.batch}, {r.iterations} timed iterations after "
             f"{r.warmup} warm-up, {mode}; times are means per batch; timer overhead "
             f"{r.overhead_us:.2f} us per region subtracted", rule, fmt(head), rule]
    lines += [fmt(row) for row in rows] + [rule, fmt(total)]
    if r.train:
        lines.append(f"cost {r.cost_ms:.3f} ms   SGD update {r.update_ms:.3f} ms   "
                     f"layer by layer: {r.forward_ms + r.backward_ms + r.cost_ms + r.update_ms:.3f} ms")
    what = "forward + backward + update" if r.train else "forward"
    lines.append(f"whole step ({what}): {r.step_ms:.3f} ms per batch (min {r.step_ms_min:.3f}, "
                 f"max {r.step_ms_max:.3f})  {r.images_per_s:,.1f} images/s  {r.gflops:,.2f} GFLOP/s "
                 f"({'3 x ' if r.train else ''}2 x {r.macs_per_image / 1e6:,.2f} M multiply-adds per image)")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def run(net_path, batch=None, iterations=10, device="cpu", train=True, warmup=2, log=print, plugins=False):
    """The verb: build the net, measure, print the table; returns the Timing."""
    from engine.net import load
    if batch is not None and not whole(batch):
        raise ConfigError(f"--batch must be a whole number >= 1, got {batch!r}")
    if iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {iterations}")
    net = load(net_path, device=device, plugins=plugins)
    if batch is None:                 # the net file's training batch, as caffe time does
        batch = net.spec.train.get("batch")
        batch = batch if whole(batch) else 32
    result = measure(net, batch=batch, iterations=iterations, warmup=warmup, train=train)
    log(format_timing(result))
    return result
