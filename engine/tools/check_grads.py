"""`python -m engine check-grads NET.yaml`: cuda-convnet's `--check-grads` for a whole net.

A batch of 2 random images (standard normal, as mean-subtracted data) with random labels,
more where a layer normalises by batch statistics (`batch_for`);
every parameter tensor's analytic gradient from `Net.gradients` (the engine's backward)
against central differences of the net's own cost, each with its measured uncertainty (see
"The step"), at cuda-convnet's threshold 0.02 of the gradient beyond that uncertainty; the
line shows cuda-convnet's ||numeric - analytic|| / ||analytic|| too.

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
its size, which a difference quotient divides by the step; ReLUs and max pooling are
piecewise linear, and with thousands of units below a weight some cross their kink within
any step: the exact cost (float64 autograd agrees with our gradients to 1e-6 on resnet-
digits) is rough at the step's scale, its slope over one step a few % off the derivative
on the deep batchnorm nets, at every step from h to 16h. Each tensor's step h moves the
cost by CHANGE = 3e-5 of max(1, |cost|) along its largest gradient.

Measured, not assumed: each checked entry's cost is evaluated at w + k h, k = -2..2. The
numeric derivative is the central difference at h; the four one-step slopes between these
points scatter by as much as rounding and kinks make the quotients scatter, so TRUST times
their standard deviation (at least one float32 unit of the cost per step) is the entry's
measured uncertainty. An entry FAILs when
|numeric - analytic| > THRESHOLD |analytic| + its uncertainty; its error is what lies
beyond, max(0, |numeric - analytic| - uncertainty) / |analytic|; one that fails is measured
again at half and twice the step and fails at two of the three, unless its central difference
moved between the step and its half: then the cost's derivative varies within the step, and
the entry is judged where it is resolved (`resolved`: least-squares fits over ever smaller
reaches, of enough evaluations to beat rounding, until two agree; googlenet at 32x32: a
batchnorm scale of 5e-4 puts a channel's every ReLU crossing within one step of its bias).
An entry whose uncertainty exceeds both its numeric and its analytic
gradient cannot be measured at this resolution (a dead unit, a kink at w), nor one whose
halving ends in rounding, and another entry replaces it; a backward that is wrong there by
more than the uncertainty is caught, since it makes one of the two gradients larger. A
tensor with fewer than half its entries measurable FAILs (reported, not passed). Measured
on resnet-digits, the entries' central differences stay within 1.8 standard deviations of
the slopes beyond 2% of the true gradient; a gradient 5% off still fails wherever the
uncertainty is under ~3% (the tensor's line shows its smallest).
"""
import time

import numpy as np

from engine.config import INPUT_NAME
from engine.errors import ConfigError

THRESHOLD = 0.02          # cuda-convnet's GC_REL_ERR_THRESH
CHANGE = 3e-5             # how far a step moves the cost (times max(1, |cost|))
STEP_MIN, STEP_MAX = 1e-5, 1e-2
STENCIL = (-2, -1, 1, 2)  # the steps k of the cost evaluations at w + k h (and w)
TRUST = 3                 # an entry's uncertainty: this many standard deviations of its one-step slopes
BATCH = 2
MIN_VALUES = 8          # values behind each batch statistic of a whole-batch layer (batchnorm)
REFINE = 12             # most halvings of a failing entry's reach (`resolved`)
RESOLUTION = 0.05       # a resolved entry's uncertainty, at most, from rounding: of |analytic|
FIT_POINTS = 17         # the fewest cost evaluations of a `fit`
MAX_FIT_POINTS = 1025   # the most (googlenet's hardest entry: 701 at its resolved reach)
AGREE = 2               # standard errors by which two fits in a row may differ and agree


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


def measure(evaluator, layer, array, ix, step):
    """(numeric derivative, its uncertainty) at entry ix: the central difference at `step`,
    and TRUST standard deviations of the one-step slopes through w + k step, k = -2..2."""
    old = array[ix]
    xs, fs = [0.0], [evaluator.base]
    for k in STENCIL:
        array[ix] = old + np.float32(k * step)
        xs.append(float(array[ix]) - float(old))        # the step float32 really took
        fs.append(evaluator.cost(layer))
    array[ix] = old
    order = np.argsort(xs)
    xs, fs = np.array(xs)[order], np.array(fs)[order]
    slopes = np.diff(fs) / np.diff(xs)
    centre = len(xs) // 2
    numeric = (fs[centre + 1] - fs[centre - 1]) / (xs[centre + 1] - xs[centre - 1])
    # at least one float32 unit of the cost per step: slopes of a cost that did not move at all agree
    return float(numeric), float(max(TRUST * np.std(slopes, ddof=1), rounding(evaluator, step)))


def noise(evaluator):
    """A float32 unit of the cost, the most its rounding moves it (googlenet at 32x32, cost 14:
    1.7e-6, the residuals of its fits 1.2e-6)."""
    return np.finfo(np.float32).eps * max(1.0, abs(evaluator.base))


def rounding(evaluator, step):
    """One float32 unit of the cost per step: the rounding a difference quotient at `step` carries."""
    return noise(evaluator) / step


def measurable(numeric, analytic, uncertainty):
    """Whether the uncertainty leaves the entry's gradient measurable; a non-finite value always
    counts (and fails)."""
    return not np.isfinite(uncertainty + analytic) or uncertainty < max(abs(numeric), abs(analytic))


def relative_error(num, ana):
    """cuda-convnet's ||num - ana|| / ||ana|| (0 when both are 0, NaN on a non-finite value)."""
    num, ana = np.asarray(num, np.float64), np.asarray(ana, np.float64)
    if not (np.all(np.isfinite(num)) and np.all(np.isfinite(ana))):
        return float("nan")
    diff, norm = np.linalg.norm(num - ana), np.linalg.norm(ana)
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return float(diff / norm)


def beyond_uncertainty(numeric, analytic, uncertainty):
    """max(0, |numeric - analytic| - uncertainty) / |analytic|; inf for a non-finite value."""
    excess = abs(numeric - analytic) - uncertainty
    if not np.isfinite(excess) or (analytic == 0 and excess > 0):
        return float("inf")
    return max(0.0, excess) / abs(analytic) if analytic else 0.0


def confirmed(evaluator, layer, array, ix, step, analytic, numeric, uncertainty, error):
    """(error, numeric, uncertainty) of an entry that failed at the tensor's step, or None where
    it turns out unmeasurable. Measured again at half and twice the step: the median of the three
    errors, so it fails where it fails at two of them (a wrong gradient fails at each; four slopes
    now and then underestimate a correct one's error). Where that median still fails but the
    central difference moved between the step and its half, the cost's derivative varies on a
    scale below the step (see `resolved`) and the entry is judged where it is resolved."""
    half = measure(evaluator, layer, array, ix, step / 2)
    twice = measure(evaluator, layer, array, ix, step * 2)
    median = float(np.median([error] + [beyond_uncertainty(n, analytic, u) for n, u in (half, twice)]))
    if median < THRESHOLD or not np.isfinite(median) or converged(evaluator, numeric, half[0], step, analytic):
        return median, numeric, uncertainty
    return resolved(evaluator, layer, array, ix, step / 2, analytic)


def converged(evaluator, coarse, fine, step, analytic):
    """Whether the central differences at `step` and its half agree, to THRESHOLD of the analytic
    gradient beyond their rounding: the derivative is resolved at `step` already. (`rounding` is a
    float32 unit of the cost per step, two or three standard deviations of a difference
    quotient's rounding.)"""
    return abs(coarse - fine) <= THRESHOLD * abs(analytic) + np.hypot(rounding(evaluator, step),
                                                                       rounding(evaluator, step / 2))


def fit(evaluator, layer, array, ix, reach, points):
    """(slope at w, its standard error): least squares of a parabola through the cost at
    `points` evenly spaced entries w + x, |x| <= reach (w itself among them), the standard
    error from the residuals (at least a quarter of a float32 unit of the cost each, so that
    a cost that never moved still has one). A parabola: its even term costs the slope nothing
    on symmetric points and keeps curvature out of the residuals; a cubic term biases the
    slope as it biases a central difference, a kink within the reach as it bends the line."""
    old = array[ix]
    half = points // 2
    xs, fs = [], []
    for k in range(-half, half + 1):
        if k:
            array[ix] = old + np.float32(k * reach / half)
        xs.append(float(array[ix]) - float(old))        # the step float32 really took
        fs.append(evaluator.cost(layer) if k else evaluator.base)
    array[ix] = old
    us, fs = np.array(xs) / reach, np.array(fs) - evaluator.base     # u in [-1, 1]: a well-conditioned basis
    basis = np.stack([np.ones_like(us), us, us * us], axis=1)
    coef = np.linalg.lstsq(basis, fs, rcond=None)[0]
    residuals = fs - basis @ coef
    sigma = max(float(np.sqrt(residuals @ residuals / (len(us) - 3))), 0.25 * noise(evaluator))
    return float(coef[1] / reach), float(sigma * np.sqrt(np.linalg.inv(basis.T @ basis)[1, 1]) / reach)


def points_for(evaluator, reach, analytic):
    """The evaluations a `fit` over +-reach needs for a standard error of RESOLUTION / TRUST of
    |analytic| from rounding alone (se = noise / (reach sqrt(n / 3)) on n even points), odd,
    at least FIT_POINTS."""
    n = 3.0 * (TRUST * noise(evaluator) / (RESOLUTION * max(abs(analytic), 1e-30) * reach)) ** 2
    return max(FIT_POINTS, 2 * int(np.ceil(min(n, 1e9) / 2)) + 1)


def resolved(evaluator, layer, array, ix, step, analytic):
    """(error, numeric, uncertainty) at the first half-step below `step` where the cost's slope
    has converged, None where rounding makes the entry unmeasurable first. A central difference
    is the cost's mean slope over [w - h, w + h]: where the derivative varies within it, as it
    does where many ReLUs cross zero within the step (a batchnorm scale of 5e-4 puts all of a
    channel's outputs within +-1.1e-3 of its bias: googlenet's inception4a.branch4.1.bn at
    32x32, step h = 1.5e-3), the differences at 2h, h and h/2 are the mean slopes there (0.13,
    0.26, 0.53 of the analytic gradient, in float64 too, where autograd agrees with the analytic
    one to 1e-3) and no spread of slopes at those steps bounds the derivative at w. So the
    reach is halved, each time a `fit` of enough points (`points_for`) for a standard error of
    RESOLUTION / TRUST of the gradient, until two fits in a row agree, to THRESHOLD of the
    gradient and AGREE standard errors (their kinks no longer move the slope): the slope at the
    smaller reach is the derivative, TRUST standard errors its uncertainty. (That entry, slopes
    at reach h/2 .. h/64: 0.18, 0.24, 0.263, 0.290, 0.271, 0.279, the ReLUs' kinks ~5e-5 apart:
    it is resolved at h/64, 0.279 +- 0.009 against 0.2725; before the fits, the central
    difference at h/16 gave 0.300 +- 0.127 on a Zen 4.) A wrong gradient stays wrong at
    any reach; the points a fit needs grow 4x with each halving, and the search ends, the entry
    unmeasurable (left out, as at a kink), where they would pass MAX_FIT_POINTS."""
    coarse = fit(evaluator, layer, array, ix, step, points_for(evaluator, step, analytic))
    for _ in range(REFINE):
        step /= 2
        points = points_for(evaluator, step, analytic)
        if points > MAX_FIT_POINTS:
            return None
        fine = fit(evaluator, layer, array, ix, step, points)
        if abs(coarse[0] - fine[0]) <= THRESHOLD * abs(analytic) + AGREE * np.hypot(coarse[1], fine[1]):
            numeric, uncertainty = fine[0], TRUST * fine[1]
            if not measurable(numeric, analytic, uncertainty):
                return None
            return beyond_uncertainty(numeric, analytic, uncertainty), numeric, uncertainty
        coarse = fine
    return None


def check_tensor(evaluator, layer, array, grad, samples, rng):
    """One parameter tensor: {"error", "passed", "entries", "wanted", "unmeasurable", "rel_err",
    "uncertainty", "numeric", "analytic", "measurable"}. Entries whose uncertainty exceeds both
    gradients are replaced by spares; "numeric" and "analytic" hold every entry measured
    ("measurable" marks those that count), the other numbers the measurable ones only."""
    step = step_for(grad, evaluator.base)
    num, ana, unc, usable, errors = [], [], [], [], []
    wanted = 0
    for want, order in _candidates(grad, samples, rng):
        wanted += want
        taken = 0
        for flat in order:
            if taken == want:
                break
            ix = np.unravel_index(int(flat), array.shape)
            numeric, uncertainty = measure(evaluator, layer, array, ix, step)
            analytic = float(grad[ix])
            ok = measurable(numeric, analytic, uncertainty)
            error = beyond_uncertainty(numeric, analytic, uncertainty)
            if ok and error >= THRESHOLD:
                judged = confirmed(evaluator, layer, array, ix, step, analytic, numeric, uncertainty, error)
                ok = judged is not None
                if ok:
                    error, numeric, uncertainty = judged
            num.append(numeric), ana.append(analytic), unc.append(uncertainty), usable.append(ok)
            if ok:
                errors.append(error)
            taken += ok
    num, ana, unc = (np.array(v, dtype=np.float64) for v in (num, ana, unc))
    usable = np.array(usable, dtype=bool)
    n, a, u = num[usable], ana[usable], unc[usable]
    error = max(errors) if errors else float("inf")
    enough = 2 * len(n) >= wanted
    with np.errstate(divide="ignore", invalid="ignore"):
        resolution = float(np.min(u / np.abs(a))) if len(n) else float("inf")
    return {"error": error, "passed": bool(enough and error < THRESHOLD), "entries": len(n),
            "wanted": wanted, "unmeasurable": int(len(num) - len(n)), "rel_err": relative_error(n, a),
            "uncertainty": resolution, "numeric": num, "analytic": ana, "measurable": usable}


def batch_for(net):
    """BATCH images, or as many as give each statistic of a layer that normalises by the whole
    batch (Layer.whole_batch: per channel over the batch and the positions of its [C, ...]
    input) at least MIN_VALUES values. With 2 values a channel's variance is that of two
    numbers, often near 0: the output is +-1 whatever the input and the cost depends on the
    layers below through terms of size eps / (var + eps), ill-conditioned in float32 (resnet18
    at 3x32x32, whose layer4 is 1x1: 44 of 62 tensors failed, yet its float32 gradients differ
    from float64 autograd's by 2-5%, PyTorch's float32 ones as much, and by 1e-5 at 64x64).
    A wrong batchnorm backward stays as wrong at any batch."""
    pixels = [int(np.prod(node.layer.input_shape[1:], dtype=np.int64)) for node in net.layers
              if node.layer.whole_batch]
    return max([BATCH] + [-(-MIN_VALUES // p) for p in pixels])


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


def check_net(net, samples=16, seed=0, on_result=None, layers=None):
    """A list of results, one per parameter tensor in execution order (of the layers named in
    `layers`, default all): `check_tensor`'s dicts with "layer" and "param"; `on_result(result)`
    sees each as it comes."""
    if not net.output_layer.layer.is_cost:
        raise ConfigError(f"the last layer '{net.output_layer.name}' is a {net.output_layer.type} "
                          "layer, not a cost layer (softmax): there is no cost to differentiate")
    rng = np.random.default_rng(seed)
    batch = batch_for(net)
    x = rng.standard_normal((batch,) + tuple(net.input_shape), dtype=np.float32)
    labels = rng.integers(0, net.num_classes, batch)
    state = net.rng.bit_generator.state
    kept = net.threading
    net.threading = "layers"      # one pass, as the replays: halves would sum batch statistics in another order
    try:
        loss, grads = net.gradients(x, labels, train=True)
    finally:
        net.threading = kept
    evaluator = PerturbedForward(net, x, labels, state)
    if not np.isclose(evaluator.base, loss, rtol=1e-6, atol=1e-7):
        raise RuntimeError(f"the replayed forward pass gives cost {evaluator.base!r}, the engine's "
                           f"{loss!r}: the check cannot trust its own evaluations")
    params = net.parameters()
    results = []
    for node in net.layers:
        if layers is not None and node.name not in layers:
            continue
        for pname in node.layer.param_shapes():
            key = f"{node.name}.{pname}"
            r = check_tensor(evaluator, node.name, params[key], grads[key], samples, rng)
            r.update(layer=node.name, param=pname)
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
    out(f"check-grads {net.name}: {batch_for(net)} random images (seed {seed}), {weights}, dropout masks held fixed")
    out(f"{how}; central differences at steps moving the cost by ~{CHANGE:g}, each with its uncertainty "
        f"({TRUST} std of the slopes through w + k h, k = -2..2); an entry fails beyond it by "
        f"{THRESHOLD:g} of |analytic|")
    width = max(len(n.name) for n in net.layers)

    def line(r):
        spares = f", {r['unmeasurable']} unmeasurable left out" if r["unmeasurable"] else ""
        short = f" of {r['wanted']} wanted: too few measurable" if 2 * r["entries"] < r["wanted"] else ""
        resolution = f", uncertainty >= {r['uncertainty']:.1%}" if r["entries"] else ""
        out(f"{r['layer']:<{width}}  {r['param']:<6}  error {r['error']:.1e}  "
            f"{'PASS' if r['passed'] else 'FAIL'}  ({r['entries']} entr{'y' if r['entries'] == 1 else 'ies'}"
            f"{short}{resolution}, rel.err {r['rel_err']:.1e}{spares})")
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
