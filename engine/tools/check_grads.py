"""`python -m engine check-grads NET.yaml`: cuda-convnet's `--check-grads` for a whole net.

A batch of 2 random images (standard normal, as mean-subtracted data) with random labels;
every parameter tensor's analytic gradient from `Net.gradients` (the engine's backward)
against central differences of the net's own cost, by cuda-convnet's relative error
||numeric - analytic|| / ||analytic|| over the checked entries and its threshold 0.02.

Which entries: a net like AlexNet has 61M parameters and each entry costs two forward
passes, so a tensor with more than `samples` entries is checked on `samples` of them: half
the entries with the largest analytic gradients (they dominate the norm, as they dominate
cuda-convnet's full-tensor norm) and half drawn at random (so a gradient the backward
forgot shows up too). Smaller tensors are checked whole; `samples=0` checks everything.
A perturbed forward pass reruns only the perturbed layer and the layers it reaches.

Dropout: the check runs in training mode with the masks held fixed: the random state each
layer draws from is recorded in the unperturbed pass and restored before that layer in
every perturbed one, so both evaluations see the same mask (train=False would make dropout
the identity and leave its backward unchecked).

Weights: by default every weight tensor is redrawn with std sqrt(2 / fan-in) and every
bias set to 0 (`rescale_weights`), the check's point rather than the file's init: cuda-
convnet's CIFAR nets start conv1 at std 1e-4 and AlexNet's 0.01 weights sit under biases of
1, which leaves early gradients far below float32 resolution (cuda-convnet's wiki gives
the same advice: a larger initW for the check). The backward is the same code at any
weights; `--file-init` keeps the file's init, `--checkpoint` checks at trained weights.

The step: our kernels are float32, so the cost carries a rounding error of about 1e-7 of
its size (measured: 7e-7 on AlexNet-digits' cost of 6.5, growing with the layers a step
passes through), which a central difference divides by 2h. ReLUs and max pooling are
piecewise linear: a step that moves some unit across its kink makes the quotient average
two slopes, and with thousands of units below a conv1 weight some always cross, an error
growing with h. Between the two, each tensor's step moves the cost by CHANGE = 3e-5 of
max(1, |cost|) along its largest gradient (rounding then ~0.3% of the change; the same
step for the tensor's smaller entries keeps their errors as small in the norm). Measured
on the shipped nets, the relative errors of correct gradients come out at 1e-5..1.2e-2,
the worst on AlexNet's conv layers; a gradient 10% off gives ~0.1.
Where one step leaves a tensor above REFINE_AT (0.5%), its entries are measured again at
three slightly larger steps and the four central differences averaged: rounding differs
from step to step, so the average has about half the noise, while a wrong gradient stays
as wrong. An entry whose one-sided quotients (f(w+h) - f(w))/h and (f(w) - f(w-h))/h
disagree by more than KINK_TOL of their size (plus rounding) straddles a sharp kink: its
derivative is not defined at this resolution and another entry replaces it (counted in
the output). This looks at the differences only, never at the analytic gradient, so it
cannot excuse a wrong backward.
"""
import time

import numpy as np

from engine.config import INPUT_NAME
from engine.errors import ConfigError

THRESHOLD = 0.02          # cuda-convnet's GC_REL_ERR_THRESH
CHANGE = 3e-5             # how far a step moves the cost (times max(1, |cost|))
STEP_MIN, STEP_MAX = 1e-5, 1e-2
ROUNDING = 1e-7           # the float32 cost's rounding error (times max(1, |cost|)), generously
KINK_TOL = 0.05
REFINE_AT = THRESHOLD / 4
REPEATS = 4             # steps averaged for a tensor above REFINE_AT: step x (1, 1.15, 1.3, 1.45)
SPREAD = 0.15
BATCH = 2


class PerturbedForward:
    """The net's cost with one parameter entry moved, recomputing only what it reaches.

    Activations of the unperturbed pass are kept (as copies: the layers reuse their output
    buffers), with each random layer's seed, so every replay draws the same dropout masks
    as `Net.gradients` drew (Net.draw_layer_seeds, from `net.rng` in `rng_state`). The
    passes are the net's executor's, rerunning only the layers reached (its `only`)."""

    def __init__(self, net, x, labels, rng_state):
        self.labels = labels
        self.nodes = net.layers
        self.executor = net.executor
        after = net.rng.bit_generator.state
        net.rng.bit_generator.state = rng_state
        self.seeds = net.draw_layer_seeds()
        net.rng.bit_generator.state = after
        acts = self.executor.forward({INPUT_NAME: x}, True, self.seeds)
        self.acts = {name: np.array(a) for name, a in acts.items()}
        self.base = self._cost()
        self.reach = self._reach()

    def _cost(self):
        return self.executor.cost(self.labels)      # every cost head, weighted

    def _reach(self):
        """layer -> the names of the layers whose output depends on it."""
        reach = {}
        for i, node in enumerate(self.nodes):
            hit = {node.name}
            for later in self.nodes[i + 1:]:
                if any(name in hit for name in later.inputs):
                    hit.add(later.name)
            reach[node.name] = hit
        return reach

    def cost(self, layer):
        # every cost head reruns too: one the entry does not reach still holds a replay's state
        heads = {self.nodes[i].name for i, _ in self.executor.heads}
        self.executor.forward(None, True, self.seeds, acts=dict(self.acts), only=self.reach[layer] | heads)
        return self._cost()


def _candidates(grad, samples, rng):
    """[(how many to take, flat indices to take them from in order)]: the largest gradients
    (ceil(samples / 2)) and random others, with spares for entries found at a kink.
    Linear time: AlexNet's fc6 has 38M entries."""
    size = grad.size
    if samples <= 0 or size <= samples:
        return [(size, np.arange(size))]
    spare = min(size, 4 * samples)
    magnitude = np.abs(grad).ravel()
    largest = np.argpartition(-magnitude, spare - 1)[:spare]
    largest = largest[np.argsort(-magnitude[largest], kind="stable")]
    top = (samples + 1) // 2
    others = rng.choice(size, size=min(size, spare + top), replace=False)
    others = others[~np.isin(others, largest[:top])][:spare]
    return [(top, largest), (samples - top, others)]


def step_for(grad, cost):
    """A tensor's step: it moves the cost by about CHANGE * max(1, |cost|) along the tensor's
    largest gradient entry (the same step for every entry keeps the small ones' noise
    and kink crossings as small as the large ones')."""
    change = CHANGE * max(1.0, abs(cost))
    return float(np.clip(change / max(float(np.max(np.abs(grad))), 1e-30), STEP_MIN, STEP_MAX))


def difference(evaluator, layer, array, ix, step):
    """(central, forward, backward) difference quotients of the cost at entry ix."""
    old = array[ix]
    array[ix] = old + step
    up, h_up = evaluator.cost(layer), float(array[ix] - old)     # the step float32 really took
    array[ix] = old - step
    down, h_down = evaluator.cost(layer), float(old - array[ix])
    array[ix] = old
    return (up - down) / (h_up + h_down), (up - evaluator.base) / h_up, (evaluator.base - down) / h_down


def is_kink(evaluator, step, forward, backward):
    """The one-sided quotients disagree beyond curvature and rounding: a kink within the step."""
    noise = ROUNDING * max(1.0, abs(evaluator.base))
    return abs(forward - backward) > KINK_TOL * (abs(forward) + abs(backward)) + 4 * noise / step


def relative_error(num, ana):
    """cuda-convnet's ||num - ana|| / ||ana|| (0 when both are 0, NaN on a non-finite value)."""
    num, ana = np.asarray(num, np.float64), np.asarray(ana, np.float64)
    if not (np.all(np.isfinite(num)) and np.all(np.isfinite(ana))):
        return float("nan")
    diff, norm = np.linalg.norm(num - ana), np.linalg.norm(ana)
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return float(diff / norm)


def check_tensor(evaluator, layer, array, grad, samples, rng):
    """{"error", "entries", "kinks", "steps", "numeric", "analytic"} for one parameter tensor.

    Each entry's central difference uses the tensor's step; where the relative error comes
    out above REFINE_AT, every entry is measured again at REPEATS - 1 slightly larger steps
    and the differences averaged: float32 rounding differs from step to step, so the
    average has about half its noise, while a wrong gradient stays as wrong."""
    diffs, ana, kinks, where = [], [], 0, []
    step = step_for(grad, evaluator.base)
    for want, order in _candidates(grad, samples, rng):
        taken = 0
        for flat in order:
            if taken == want:
                break
            ix = np.unravel_index(int(flat), array.shape)
            central, fwd, bwd = difference(evaluator, layer, array, ix, np.float32(step))
            if is_kink(evaluator, step, fwd, bwd):
                kinks += 1
                continue
            diffs.append([central])
            ana.append(float(grad[ix]))
            where.append(ix)
            taken += 1
    steps = 1
    if relative_error([d[0] for d in diffs], ana) > REFINE_AT:
        steps = REPEATS
        for ix, found in zip(where, diffs):
            for j in range(1, REPEATS):
                h = step * (1 + SPREAD * j)
                central, fwd, bwd = difference(evaluator, layer, array, ix, np.float32(h))
                if not is_kink(evaluator, h, fwd, bwd):
                    found.append(central)
    num = np.array([np.mean(d) for d in diffs])
    return {"error": relative_error(num, ana), "entries": len(num), "kinks": kinks, "steps": steps,
            "numeric": num, "analytic": np.array(ana)}


def rescale_weights(net, seed=0):
    """Redraw every weight tensor with std sqrt(2 / fan-in) (He et al. 2015), fan-in being a
    layer's multiply-adds per output unit, and set the biases to zero (see the module's
    docstring for why the check does not run at the file's init)."""
    rng = np.random.default_rng([seed, 7])
    params = net.parameters()
    for node in net.layers:
        if f"{node.name}.bias" in params:
            params[f"{node.name}.bias"].fill(0.0)
        weight = params.get(f"{node.name}.weight")
        if weight is None or node.layer.macs() <= 0:
            continue
        fan_in = node.layer.macs() / int(np.prod(node.output_shape))
        weight[...] = rng.standard_normal(weight.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))


def check_net(net, samples=16, seed=0, on_result=None):
    """A list of results, one per parameter tensor in execution order: dicts with "layer",
    "param", "error", "entries", "kinks", "passed"; `on_result(result)` sees each as it comes."""
    if not net.output_layer.layer.is_cost:
        raise ConfigError(f"the last layer '{net.output_layer.name}' is a {net.output_layer.type} "
                          "layer, not a cost layer (softmax): there is no cost to differentiate")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH,) + tuple(net.input_shape), dtype=np.float32)
    labels = rng.integers(0, net.num_classes, BATCH)
    state = net.rng.bit_generator.state
    loss, grads = net.gradients(x, labels, train=True)
    evaluator = PerturbedForward(net, x, labels, state)
    if not np.isclose(evaluator.base, loss, rtol=1e-6, atol=1e-7):
        raise RuntimeError(f"the replayed forward pass gives cost {evaluator.base!r}, the engine's "
                           f"{loss!r}: the check cannot trust its own evaluations")
    params = net.parameters()
    results = []
    for node in net.layers:
        for pname in node.layer.param_shapes():
            key = f"{node.name}.{pname}"
            r = check_tensor(evaluator, node.name, params[key], grads[key], samples, rng)
            # no measurable entry (every one at a kink) proves nothing: a failure, not a pass
            r.update(layer=node.name, param=pname, passed=bool(r["entries"] and r["error"] < THRESHOLD))
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


def run(path, samples=16, seed=0, checkpoint=None, file_init=False, out=print, plugins=False):
    """The CLI verb: a line per parameter tensor, then a verdict; returns the exit status."""
    from engine.net import load
    net = load(path, seed=seed, checkpoint=checkpoint, plugins=plugins)
    if checkpoint is not None:
        weights = f"the weights of {net.checkpoint_meta['path']}"
    elif file_init:
        weights = "the net file's init"
    else:
        rescale_weights(net, seed)
        weights = "weights drawn with std sqrt(2/fan-in), biases 0"
    top = (samples + 1) // 2
    how = (f"{samples} entries per tensor ({top} with the largest gradients, {samples - top} at random; "
           "smaller tensors whole)" if samples > 0 else "every entry")
    out(f"check-grads {net.name}: {BATCH} random images (seed {seed}), {weights}, dropout masks held fixed")
    out(f"{how}; central differences, steps moving the cost by ~{CHANGE:g}; "
        f"relative error ||num - ana|| / ||ana||, threshold {THRESHOLD:g}")
    width = max(len(n.name) for n in net.layers)

    def line(r):
        steps = f" x {r['steps']} steps" if r["steps"] > 1 else ""
        kinks = f", {r['kinks']} at a kink replaced" if r["kinks"] else ""
        out(f"{r['layer']:<{width}}  {r['param']:<6}  rel.err {r['error']:.1e}  "
            f"{'PASS' if r['passed'] else 'FAIL'}  ({r['entries']} entr{'y' if r['entries'] == 1 else 'ies'}"
            f"{steps}{kinks})")
    t0 = time.time()
    results = check_net(net, samples=samples, seed=seed, on_result=line)
    failed = [r for r in results if not r["passed"]]
    took = f" in {time.time() - t0:.1f}s"
    if failed:
        out(f"{len(failed)}/{len(results)} TESTS FAILED{took}: "
            + ", ".join(f"{r['layer']}.{r['param']}" for r in failed))
        return 1
    out(f"ALL {len(results)} TESTS PASSED{took}")
    return 0
