"""Property-based fuzzing of net definitions (hypothesis).

Valid small nets (every layer type) are generated with their expected output shape computed here,
independently of the engine; they must load, and forward (and, ending in softmax, give
gradients) finite numbers of that shape. Mutated nets -- wrong types, missing and unknown
keys, out-of-range and absurd values, bad wiring, deep and wide graphs, odd names, random
text -- must load or raise engine.ConfigError with a one-line message that names something;
never another exception, a Numba error or a hang. A net that loads must run.

Derandomized, so CI runs the same examples every time; a tenth of them without --full;
FUZZ_EXAMPLES=N runs N random examples per test instead (e.g. FUZZ_EXAMPLES=20000 for a long
local hunt). A layer type the generator has no rules for is drawn from its class's `examples`.
"""
import contextlib
import math
import os
import re
import signal
import time

import numpy as np
import pytest
import yaml
from numba.core import event as numba_event

import helpers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import engine  # noqa: E402
import layers as layer_types  # noqa: E402
from layers import threads  # noqa: E402
from engine import ConfigError, MemoryLimitError  # noqa: E402

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
LIMIT_S = 30          # per example: a hang fails the test instead of stalling CI
MEMORY_LIMIT = "64M"  # every net is small; a mutation to a huge one is refused fast


def fuzz(n):
    # CI: the same examples every run; a scaled-up local hunt draws new ones each time
    return settings(max_examples=SCALE or (n if helpers.FULL else n // 10), deadline=None, derandomize=SCALE is None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def small_memory_and_warm_kernels():
    old = os.environ.get("ENGINE_MEMORY_LIMIT")
    os.environ["ENGINE_MEMORY_LIMIT"] = MEMORY_LIMIT
    # compile the kernels once, outside the per-example time limit
    for fn, beta in (("relu", 0.75), ("abs", 0.6)):
        net = engine.load(_warm_net(fn, beta))
        x = np.random.default_rng(0).standard_normal((2,) + net.input_shape).astype(np.float32)
        net.forward(x)
        net.forward(x, train=True)
        net.gradients(x, np.array([0, 1]), train=True)
    yield
    if old is None:
        del os.environ["ENGINE_MEMORY_LIMIT"]
    else:
        os.environ["ENGINE_MEMORY_LIMIT"] = old


def _warm_net(fn, beta):
    return {"input": {"shape": [4, 8, 8]}, "layers": [
        {"name": "c", "type": "conv", "filters": 4, "size": 3, "padding": 1, "groups": 2, "neuron": fn},
        {"name": "p", "type": "pool", "mode": "max", "size": 2, "neuron": fn},
        {"name": "q", "type": "pool", "mode": "avg", "size": 2, "stride": 1, "inputs": ["c"]},
        {"name": "n", "type": "cmrnorm", "size": 2, "beta": beta, "groups": 2, "inputs": ["p"]},
        {"name": "r", "type": "rnorm", "size": 2, "beta": beta, "inputs": ["q"]},
        {"name": "a", "type": "neuron", "fn": fn, "inputs": ["n"]},
        {"name": "f", "type": "fc", "outputs": 6, "neuron": fn, "inputs": ["a", "r"]},
        {"name": "d", "type": "dropout"},
        {"name": "s", "type": "softmax"}]}


COMPILING = threads.COMPILING      # a kernel compiled inside an example is not a hang


@contextlib.contextmanager
def time_limit(seconds):
    """Raise TimeoutError once an example has run `seconds`, not counting Numba compiling."""
    start, granted = COMPILING.seconds(), 0.0

    def expired(signum, frame):
        nonlocal granted
        owed = COMPILING.seconds() - start - granted
        # the limit moves by the time spent compiling (Python runs this handler only once the
        # compiler's C code returns: the compile may just have ended)
        if COMPILING.depth or owed > 0:
            granted += max(owed, 0.0)
            signal.setitimer(signal.ITIMER_REAL, max(owed, 1.0))
            return
        raise TimeoutError(f"example took more than {seconds} s (compiling not counted)")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_time_limit_stops_a_slow_example_but_not_a_compiling_one():
    import numba
    with pytest.raises(TimeoutError):
        with time_limit(0.2):
            time.sleep(2)

    class AlarmWhileCompiling(numba_event.Listener):
        """Rings the limit's alarm 1 ms into the compile: there for certain, where a short
        limit could ring before the compile had begun on a busy machine."""

        def on_start(self, event):
            if COMPILING.depth == 1:        # COMPILING, registered first, has counted it
                signal.setitimer(signal.ITIMER_REAL, 0.001)

        def on_end(self, event):
            pass
    alarm = AlarmWhileCompiling()
    before = COMPILING.seconds()
    numba_event.register("numba:compile", alarm)
    try:
        with time_limit(30):
            numba.njit(lambda a: (a * 2.0).sum())(np.ones(3))
            left = signal.getitimer(signal.ITIMER_REAL)[0]
    finally:
        numba_event.unregister("numba:compile", alarm)
    assert COMPILING.seconds() - before > 0.001
    # the 1 ms alarm rang while compiling: it raised nothing and armed the limit again (a
    # spent one-shot timer reads 0); the compile itself may have used part of the new second
    assert left > 0, "the alarm rang while compiling and the limit moved on"


# ---- valid nets, with their shapes computed here --------------------------------------------
NEURONS = ("relu", "tanh", "logistic", "abs", "linear", "tanh[1.7159,0.6667]", "brelu[6]", "softrelu",
           "linear[0.5,0.1]")
NAME_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
                    max_size=6)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class Builder:
    """Draws layers valid for the current shape and tracks shapes (the README's rules)."""

    def __init__(self, draw):
        self.draw = draw
        self.layers = []
        self.unicode = draw(st.booleans())

    def name(self):
        stem = self.draw(NAME_TEXT) if self.unicode else ""
        return f"{stem or 'l'}_{len(self.layers)}"

    def maybe(self, layer, key, strategy, default_ok=True):
        """Set a key, or (where it has a default) sometimes leave it to the default."""
        if not default_ok or self.draw(st.booleans()):
            layer[key] = self.draw(strategy)

    def add(self, kind, src, shape, gpu=0, keep_hw=False, extra_inputs=()):
        """Append a layer of `kind` reading src (a name) and return (name, output shape)."""
        d = self.draw
        layer = {"name": self.name(), "type": kind}
        inputs = [src] + list(extra_inputs)
        previous = self.layers[-1]["name"] if self.layers else "data"
        if inputs != [previous] or d(st.booleans()):
            layer["inputs"] = inputs if len(inputs) > 1 or d(st.booleans()) else src
        if gpu or d(st.booleans()):
            layer["gpu"] = gpu
        if kind in ("conv", "local"):
            c, h, w = shape
            g = d(st.sampled_from(divisors(c)))
            f = g * d(st.integers(1, 3))
            if keep_hw:
                p = d(st.integers(0, 1))
                k, s = 2 * p + 1, 1
            else:
                p = d(st.integers(0, 2))
                k = d(st.integers(1, min(h, w) + 2 * p).filter(lambda v: v <= 5))
                s = d(st.integers(1, 3))
            layer.update(filters=f, size=k)
            if s != 1 or d(st.booleans()):
                layer["stride"] = s
            if p or d(st.booleans()):
                layer["padding"] = p
            if g != 1 or d(st.booleans()):
                layer["groups"] = g
            self.maybe(layer, "neuron", st.sampled_from(NEURONS))
            self.maybe(layer, "init_w", st.sampled_from([0.01, 0.1, 0.3, 1]))
            self.maybe(layer, "init_b", st.sampled_from([0, -0.5, 0.1, 1]))
            self.maybe(layer, "lr_w", st.sampled_from([0, 1, 2.5]))
            out = (f, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        elif kind == "pool":
            c, h, w = shape
            k = 1 if keep_hw else d(st.integers(1, min(h, w, 4)))
            s = 1 if keep_hw else d(st.integers(1, k))
            layer.update(mode=d(st.sampled_from(["max", "avg"])), size=k)
            if s != k or d(st.booleans()):
                layer["stride"] = s
            self.maybe(layer, "neuron", st.sampled_from(NEURONS))
            out = (c, -(-(h - k) // s) + 1, -(-(w - k) // s) + 1)
        elif kind == "cmrnorm":
            c = shape[0]
            g = d(st.sampled_from(divisors(c)))
            layer["size"] = d(st.integers(1, c // g))
            if g != 1 or d(st.booleans()):
                layer["groups"] = g
            self.maybe(layer, "alpha", st.sampled_from([1e-4, 0.01, 1, 2.5]))
            self.maybe(layer, "beta", st.sampled_from([0.75, 0.5, 1, 0.6, 0, 2]))
            self.maybe(layer, "k", st.sampled_from([2, 1, 0.5]))
            out = shape
        elif kind in ("rnorm", "cnorm"):
            layer["size"] = d(st.integers(1, min(shape[1], shape[2], 5)))
            self.maybe(layer, "alpha", st.sampled_from([1e-4, 0.01, 1, 2.5]))
            self.maybe(layer, "beta", st.sampled_from([0.75, 0.5, 1, 0.6, 0, 2]))
            self.maybe(layer, "k", st.sampled_from([2, 1, 0.5]))
            out = shape
        elif kind == "neuron":
            layer["fn"] = d(st.sampled_from(NEURONS))
            out = shape
        elif kind == "dropout":
            self.maybe(layer, "rate", st.sampled_from([0, 0.1, 0.5, 0.9]))
            out = shape
        elif kind == "dropout2":
            self.maybe(layer, "keep", st.sampled_from([0.1, 0.5, 1.0]))
            out = shape
        elif kind in ("eltsum", "eltmax"):        # inputs of one shape, side by side
            if kind == "eltsum" and d(st.booleans()):
                layer["coeffs"] = d(st.lists(st.sampled_from([1, -1, 0.5, 2.0]), min_size=len(inputs),
                                             max_size=len(inputs)))
            out = shape
        elif kind == "concat":
            flat = len(shape) == 1 or d(st.booleans())
            if flat or d(st.booleans()):
                layer["mode"] = "flat" if flat else "channels"
            out = (math.prod(shape),) if flat else shape
        elif kind == "fc":
            layer["outputs"] = d(st.integers(1, 8))
            self.maybe(layer, "neuron", st.sampled_from(NEURONS))
            self.maybe(layer, "init_w", st.sampled_from([0.01, 0.1, 0.5]))
            out = (layer["outputs"],)
        elif kind == "sum2":
            self.maybe(layer, "coeff", st.sampled_from([1, 0.5, 3.0]))
            out = shape
        elif kind == "softmax":
            out = (math.prod(shape),)
        else:       # a type with no rules here: one of its examples, shaped by the layer itself
            shapes = [shape] * len(inputs)     # one input, or join "separate": each of one shape
            cfg = d(st.sampled_from(fitting_examples(kind, shapes)))
            layer.update(cfg)
            out = layer_types.get(kind)(layer["name"], cfg, shapes).output_shape
        self.layers.append(layer)
        return layer["name"], tuple(out)

    def kinds(self, shape, keep_hw=False):
        if len(shape) == 1:
            return ["fc", "neuron", "dropout", "dropout2"] + without_rules(shape)
        kinds = ["conv", "local", "pool", "cmrnorm", "rnorm", "cnorm", "neuron", "dropout", "dropout2"]
        # an example may change H x W: not where the columns must keep it
        return kinds if keep_hw else kinds + ["fc"] + without_rules(shape)


# the types Builder.add has rules for; any other is drawn from its class's `examples`
WITH_RULES = {"conv", "local", "pool", "cmrnorm", "rnorm", "cnorm", "neuron", "dropout", "dropout2",
              "eltsum", "eltmax", "concat", "fc", "sum2", "softmax"}
COSTS = sorted(t for t, cls in layer_types.REGISTRY.items() if cls.is_cost)


def fitting_examples(kind, shapes):
    cls, fit = layer_types.get(kind), []
    for cfg in cls.examples:
        try:
            cls("probe", cfg, shapes)
            fit.append(cfg)
        except layer_types.LayerError:
            pass
    return fit


def without_rules(shape, separate=False):
    """Types with no rules in Builder.add and an example fitting shape (not costs): those
    reading one input, or (separate) those reading two of that shape side by side."""
    return [t for t, cls in sorted(layer_types.REGISTRY.items())
            if t not in WITH_RULES and not cls.is_cost and (cls.join == "separate") == separate
            and fitting_examples(t, [shape] * (2 if separate else 1))]


def test_every_layer_type_has_examples_the_generator_can_draw():
    missing = helpers.missing_examples()
    assert not missing, f"layer types without their own `examples` (see layers/base.py): {missing}"
    for t, cls in layer_types.REGISTRY.items():
        shapes = [helpers.EXAMPLE_INPUT] * (2 if cls.join == "separate" else 1)
        assert fitting_examples(t, shapes) == list(cls.examples), \
            f"{t}: every config in `examples` must be valid on a {list(helpers.EXAMPLE_INPUT)} input"


@st.composite
def valid_nets(draw, max_blocks=4):
    """(net dict, expected output shape of its last layer)."""
    b = Builder(draw)
    input_shape = (draw(st.integers(1, 4)), draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    src, shape = "data", input_shape
    for _ in range(draw(st.integers(0, max_blocks))):
        if len(shape) == 3 and draw(st.integers(0, 2)) == 0:
            src, shape = two_columns(draw, b, src, shape)
        else:
            src, shape = b.add(draw(st.sampled_from(b.kinds(shape))), src, shape)
    if not b.layers or draw(st.booleans()):
        src, shape = b.add(draw(st.sampled_from(["softmax"] + COSTS)), src, shape)
    net = {"input": {"shape": list(input_shape)}, "layers": b.layers}
    if draw(st.booleans()):
        net["name"] = draw(NAME_TEXT) or "net"
    if draw(st.integers(0, 3)) == 0:     # only keys every layer type's defaults can take
        net["defaults"] = draw(st.sampled_from([{"init_w": 0.05, "gpu": 0}, {"gpu": 1}, {"lr_w": 0.5},
                                                {"neuron": "relu"}, {"rate": 0.2, "alpha": 0.01}]))
    if all("inputs" in layer for layer in b.layers):   # explicit wiring: any order loads
        net["layers"] = draw(st.permutations(b.layers))
    return net, shape


def two_columns(draw, b, src, shape):
    """Two columns (gpu 0 and 1) read src; one layer joins them, along channels or flat."""
    flat = draw(st.booleans())
    ends = []
    for gpu in (0, 1):
        s, sh = src, shape
        for _ in range(draw(st.integers(1, 2))):
            s, sh = b.add(draw(st.sampled_from(b.kinds(sh, keep_hw=not flat))), s, sh, gpu=gpu,
                          keep_hw=not flat)
        ends.append((s, sh))
    (a, sa), (c, sc) = ends
    if flat:
        return b.add("fc", a, (math.prod(sa) + math.prod(sc),), extra_inputs=[c])
    if sa == sc and draw(st.booleans()):      # same shapes: they may also be added or maxed
        return b.add(draw(st.sampled_from(["eltsum", "eltmax"] + without_rules(sa, separate=True))), a, sa,
                     extra_inputs=[c])
    kind = draw(st.sampled_from(["conv", "local", "pool", "cmrnorm", "rnorm", "cnorm", "neuron", "dropout",
                                 "dropout2", "concat", "fc"]))
    joined = (math.prod(sa) + math.prod(sc),) if kind == "fc" else (sa[0] + sc[0],) + sa[1:]
    return b.add(kind, a, joined, extra_inputs=[c])


@st.composite
def deep_nets(draw):
    """A chain of 100-300 shape-keeping layers."""
    b = Builder(draw)
    shape = (2, 3, 3)
    src = "data"
    for _ in range(draw(st.integers(100, 300))):
        src, shape = b.add(draw(st.sampled_from(["neuron", "dropout", "cmrnorm", "rnorm"])), src, shape)
    src, shape = b.add("softmax", src, shape)
    return {"input": {"shape": [2, 3, 3]}, "layers": b.layers}, shape


@st.composite
def wide_nets(draw):
    """20-80 columns read the input; one layer joins them all."""
    b = Builder(draw)
    shape = (1, 4, 4)
    ends = [b.add(draw(st.sampled_from(["conv", "neuron", "pool"])), "data", shape,
                  gpu=i % 2, keep_hw=True) for i in range(draw(st.integers(20, 80)))]
    if draw(st.booleans()):
        src, out = b.add("fc", ends[0][0], (sum(math.prod(s) for _, s in ends),),
                         extra_inputs=[e for e, _ in ends[1:]])
    else:
        src, out = b.add("conv", ends[0][0], (sum(s[0] for _, s in ends), 4, 4),
                         extra_inputs=[e for e, _ in ends[1:]])
    return {"input": {"shape": [1, 4, 4]}, "layers": b.layers}, out


# ---- mutations ------------------------------------------------------------------------------
WEIRD = [10**12, 2**63, 2**31, 2**31 - 1, -2**63, 10**100, -1, 0, 1, 1.5, -0.0, 1e308, 1e-308, 1e39,
         float("nan"), float("inf"), float("-inf"), None, True, False, [], [1, 2], [[3]], {}, {"a": 1},
         "", "abc", "3", "relu", "max", "data", "ünï", "a\nb", "\x00", " " * 3, "x" * 5000]
EDGE = [0, 1, 2, -1, 3, 7, 2**31 - 1, 2**31, 10**6, 0.0, 1.0, 0.5, 0.999999, 1e-30, 1e-45, 1e30,
        3.4e38, 1e39, -1e-30, 100.0]
ALL_KEYS = sorted({"name", "type", "inputs", "gpu", "lr_w", "lr_b", "wd", "filters", "size",
                   "stride", "padding", "groups", "neuron", "init_w", "init_b", "mode", "alpha",
                   "beta", "k", "outputs", "fn", "rate"})
BAD_NAMES = ["", "data", "a\nb", "tab\there", "\u2028", "x" * 300, "名前", "ⅻ", "🙂", "a.b", "-", "null"]


@st.composite
def mutated_nets(draw):
    """(net dict, whether its values are still sane), after 1-3 mutations."""
    net, _ = draw(st.one_of(valid_nets(), valid_nets(max_blocks=1)))
    sane = True
    for _ in range(draw(st.integers(1, 3))):
        sane &= mutate(draw, net)
    return net, sane


def mutate(draw, net):
    """Mutate the net dict in place; False where a value may now be extreme but valid."""
    d = draw
    layers = net.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(v, dict) for v in layers):
        layers = None
    kind = d(st.sampled_from(["edge", "edge", "edge", "value", "value", "delete", "extra", "wiring",
                              "wiring", "type", "name", "top"] if layers else ["top"]))
    weird = st.sampled_from(WEIRD) | st.integers() | st.floats() | st.text(max_size=10)
    if kind == "edge":       # a key of the layer's own type, at the edge of (or past) its range
        layer = d(st.sampled_from(layers))
        cls = layer_types.REGISTRY.get(layer.get("type")) if isinstance(layer.get("type"), str) else None
        keys = sorted(set(cls.keys) | {"gpu", "lr_w", "lr_b", "wd"}) if cls else ALL_KEYS
        layer[d(st.sampled_from(keys))] = d(st.sampled_from(EDGE))
        return False
    if kind == "value":
        layer = d(st.sampled_from(layers))
        key = d(st.sampled_from(sorted(layer, key=str) or ALL_KEYS) | st.sampled_from(ALL_KEYS))
        layer[key] = d(weird)
        return False
    if kind == "delete":
        layer = d(st.sampled_from(layers))
        if layer:
            del layer[d(st.sampled_from(sorted(layer, key=str)))]
        return True
    if kind == "extra":
        layer = d(st.sampled_from(layers))
        layer[d(st.sampled_from(ALL_KEYS) | st.text(max_size=8) | st.integers())] = d(weird)
        return False
    if kind == "type":
        d(st.sampled_from(layers))["type"] = d(st.sampled_from(
            ["conv", "pool", "cmrnorm", "rnorm", "fc", "neuron", "dropout", "softmax", "Conv",
             "convolution", "", None, 3, ["conv"], {"conv": 1}]))
        return True
    if kind == "name":
        d(st.sampled_from(layers))["name"] = d(st.sampled_from(BAD_NAMES) | weird)
        return True
    if kind == "wiring":
        i = d(st.integers(0, len(layers) - 1))
        j = d(st.integers(0, len(layers) - 1))
        names = [layer.get("name") for layer in layers]
        how = d(st.sampled_from(["unknown", "cycle", "self", "duplicate", "unused", "weird",
                                 "twice", "data"]))
        if how == "unknown":
            layers[i]["inputs"] = [d(st.sampled_from(["dta", "nope", "DATA", "l_0 "])) ]
        elif how == "cycle":
            lo, hi = min(i, j), max(i, j)
            layers[lo]["inputs"] = [names[hi]]
        elif how == "self":
            layers[i]["inputs"] = [names[i]]
        elif how == "duplicate":
            layers[i]["name"] = names[j]
        elif how == "unused":
            layers.insert(i, {"name": "unused_extra", "type": "neuron", "fn": "relu",
                              "inputs": ["data"]})
        elif how == "weird":
            layers[i]["inputs"] = d(weird)
        elif how == "twice":
            layers[i]["inputs"] = [names[j], names[j]]
        else:
            layers[i]["inputs"] = "data"
        return True
    # top level
    how = d(st.sampled_from(["drop_input", "drop_layers", "shape", "shape_len", "extra", "layers",
                             "defaults", "defaults_value", "name", "input"]))
    if how == "drop_input":
        net.pop("input", None)
    elif how == "drop_layers":
        net.pop("layers", None)
    elif how == "shape":
        shape = list(net.get("input", {}).get("shape", [1, 4, 4])) if isinstance(net.get("input"), dict) \
            else [1, 4, 4]
        if isinstance(shape, list) and shape:
            shape[d(st.integers(0, len(shape) - 1))] = d(weird)
        net["input"] = {"shape": shape}
        return False
    elif how == "shape_len":
        net["input"] = {"shape": d(st.lists(st.integers(-2, 10**10), max_size=5))}
        return False
    elif how == "extra":
        net[d(st.sampled_from(["layer", "inputs", "Layers", "defaults ", "seed"]) | st.text(max_size=5))] = 1
    elif how == "layers":
        net["layers"] = d(st.sampled_from([[], None, {}, "conv", [None], [[]], [1, 2], [{}]]))
    elif how == "defaults":
        net["defaults"] = {d(st.sampled_from(ALL_KEYS) | st.text(max_size=5)): d(weird)}
        return False
    elif how == "defaults_value":
        net["defaults"] = d(weird)
    elif how == "name":
        net["name"] = d(weird)
    else:
        net["input"] = d(weird)
    return True


# ---- checks ---------------------------------------------------------------------------------
TMP = None


def render(draw, net):
    """(source for engine.load, kind): the dict, YAML text, or a file holding it."""
    global TMP
    how = draw(st.sampled_from(["dict", "text", "file"]))
    if how == "dict":
        return net, how
    text = yaml.safe_dump(net, allow_unicode=True, sort_keys=False,
                          default_flow_style=draw(st.sampled_from([False, None, True])))
    if how == "text":
        return text, how
    import tempfile
    TMP = TMP or tempfile.mkdtemp(prefix="fuzz-nets-")
    path = os.path.join(TMP, "net.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path, how


def note(what):
    """A hypothesis event (--hypothesis-show-statistics tallies them), outside tests a no-op."""
    with contextlib.suppress(hypothesis.errors.InvalidArgument):
        event(what)


WHOLE_FILE = ("a net file is", "no such net file", "YAML", "a net is", "missing required top-level")


def load_or_error(source, kind="dict"):
    """The net, or None after checking the ConfigError it raised."""
    try:
        net = engine.load(source)
        note("loaded")
        return net
    except ConfigError as err:
        note(f"ConfigError: {err.message[:25]}")
        text = str(err)
        assert text and "\n" not in text and "\r" not in text, repr(text)
        assert len(text) < 1000, text[:1000]
        if kind == "file":
            assert err.file == source and text.startswith(source), text
        # it names a layer, a key, a line or the file -- or says what is wrong with the whole net
        assert (err.layer or err.key is not None or err.line or err.file
                or err.message.startswith(WHOLE_FILE)), text
        if kind != "dict" and err.layer:
            assert err.line, text         # YAML text: every layer has a line
        return None


def run(net, expected=None, sane=True):
    """Forward (and gradients, for a softmax net) on a random batch of 2."""
    x = np.random.default_rng(0).standard_normal((2,) + net.input_shape).astype(np.float32)
    out = tuple(net.layers[-1].output_shape)
    if expected is not None:
        assert out == tuple(expected)
    try:
        y = net.forward(x)
    except MemoryLimitError:
        assert not sane, "a small valid net was refused"
        return
    assert y.shape == (2,) + out and y.dtype == np.float32
    if sane:
        assert np.isfinite(y).all()
    if net.layers[-1].type == "softmax":
        try:
            loss, grads = net.gradients(x, np.array([0, out[0] - 1]), train=True)
        except MemoryLimitError:
            assert not sane, "a small valid net was refused"
            return
        assert set(grads) == set(net.parameters())     # state (running stats) has no gradient
        if sane:
            assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


# ---- the tests ------------------------------------------------------------------------------
@fuzz(300)
@given(st.data())
def test_valid_nets_load_and_run(data):
    net, expected = data.draw(st.one_of(valid_nets(), deep_nets(), wide_nets()) if data.draw(
        st.integers(0, 19)) == 0 else valid_nets())
    source, kind = render(data.draw, net)
    with time_limit(LIMIT_S):
        loaded = engine.load(source)
        names = [layer["name"] for layer in net["layers"]]
        assert sorted(n.name for n in loaded.layers) == sorted(names)
        order = {n.name: i for i, n in enumerate(loaded.layers)}
        assert all(order[i] < order[n.name] for n in loaded.layers for i in n.inputs if i != "data")
        run(loaded, expected)


@fuzz(1000)
@given(st.data())
def test_mutated_nets_load_or_raise_config_error(data):
    net, sane = data.draw(mutated_nets())
    source, kind = render(data.draw, net)
    with time_limit(LIMIT_S):
        loaded = load_or_error(source, kind)
        if loaded is not None:
            run(loaded, sane=sane)


YAML_BITS = ["layers:", "input:", "shape: [3, 8, 8]", "- ", "{", "}", "[", "]", ": ", ",", "name: a",
             "type: conv", "type: softmax", "\n", "  ", "    ", "&a ", "*a", "<<: ", "? ", "!!python/object:os.system ",
             "!!int x", "!!float y", "!!binary ", "!!set ", "2001-13-45", "0x1F", "1e3", ".inf", "~", "'", '"',
             "#", "%YAML 1.1\n", "---\n", "...\n", "|\n", ">\n", "\t", "\x00", "\ufeff", "é", "filters: 4",
             "inputs: [data]", "size: 99999999999999999999", "defaults: {init_w: 1}"]


@fuzz(300)
@given(st.one_of(st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")),
                 st.text(max_size=200),
                 st.lists(st.sampled_from(YAML_BITS), max_size=40).map("".join)))
@example("[" * 3000 + "]" * 3000)
@example("a: " * 3000)
@example("- " * 3000)
@example("&a [*a]")
@example("&a {x: *a}")
@example("input: {shape: [1, 2, 2]}\nlayers: [{name: a, type: softmax}]\nx: !!int x\n")
@example("input: {shape: [1, 2, 2]}\nlayers: [{name: a, type: softmax, 2020-99-99: 1}]\n")
@example("? [a, b]\n: 1\n")
@example("? {a: 1}\n: 1\n")
@example("input: {shape: [1, 2, 2]}\nlayers:\n  - &l {name: a, type: neuron, fn: relu}\n"
         "  - <<: *l\n    name: b\n  - {name: c, type: softmax}\n")
@example("bad\x00.yaml")
def test_random_text_never_crashes(text):
    with time_limit(LIMIT_S):
        net = load_or_error(text, "text")
        if net is not None:
            run(net, sane=False)


def test_merge_keys_override_instead_of_duplicating():
    net = engine.load("input: {shape: [1, 2, 2]}\nlayers:\n  - &l {name: a, type: neuron, fn: relu}\n"
                      "  - <<: *l\n    name: b\n    inputs: [a]\n  - {name: c, type: softmax}\n")
    assert [n.name for n in net.layers] == ["a", "b", "c"] and net.layers[1].layer.fn == "relu"
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        engine.load("input: {shape: [1, 2, 2]}\nlayers:\n  - {name: a, name: b, type: softmax}\n")


# ---- what the fuzzing found, kept as plain regression tests ---------------------------------
ONE = {"input": {"shape": [1, 4, 4]}}


@pytest.mark.parametrize("source,fragment", [
    # crashed: TypeError (unhashable type) on a list or mapping as the type
    (dict(ONE, layers=[{"name": "a", "type": ["conv"]}]), "unknown layer type"),
    (dict(ONE, layers=[{"name": "a", "type": {"conv": 1}}]), "unknown layer type"),
    # crashed: RecursionError, ValueError and TypeError out of the YAML parser
    ("[" * 3000 + "]" * 3000, "nested too deeply"),
    ("input: {shape: [1, 2, 2]}\nlayers: [{name: a, type: softmax, 2020-99-99: 1}]\n", "month"),
    ("x: !!int x\n", "invalid literal"),
    ("? [a, b]\n: 1\n", "mapping key must be a plain value"),
    # a two-line message (YAML's own text) and a ValueError for a NUL in a path
    ("bad\x00.yaml", "cannot read net file"),
    ("a: b\x00c\n", "special characters"),
    # an int64 overflow in np.prod became "array is too big" (ValueError)
    ({"input": {"shape": [2**31 - 1] * 3}, "layers": [{"name": "a", "type": "fc", "outputs": 2}]},
     "parameters alone"),
    # loaded, then NaN (0/0) or inf weights: now refused
    (dict(ONE, layers=[{"name": "a", "type": "rnorm", "size": 3, "k": 0}]), "must be > 0"),
    (dict(ONE, layers=[{"name": "a", "type": "cmrnorm", "size": 1, "k": -1}]), "must be > 0"),
    (dict(ONE, layers=[{"name": "a", "type": "fc", "outputs": 2, "init_b": 1e39}]), "float32"),
    # loaded; the name would break every message about the layer over two lines
    (dict(ONE, layers=[{"name": "a\nb", "type": "softmax"}]), "printable"),
    (dict(ONE, layers=[{"name": "x" * 5000, "type": "softmax"}]), "1 to 200 printable"),
    # loaded; stride 2**63 reached the Numba kernels as an unsigned int
    (dict(ONE, layers=[{"name": "a", "type": "conv", "filters": 2, "size": 3, "stride": 2**63}]),
     "2**31 - 1"),
    # named nothing: no layer, key or line
    (dict(ONE, layers=[{"type": "softmax"}]), "has no `name`"),
])
def test_fuzz_regressions(source, fragment):
    with time_limit(LIMIT_S):
        assert load_or_error(source, "text" if isinstance(source, str) else "dict") is None
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        engine.load(source)


def test_yaml_floats_without_a_dot_say_why():
    for text in ("1e-4", "1E+4", "3.0e38", ".5e3", "2.e7"):
        with pytest.raises(ConfigError, match=rf"got '{re.escape(text)}' \(text: YAML wants a dot and a signed "
                                              r"exponent in a number, like 1.0e-4 or 3.0e\+38\)"):
            engine.load("input: {shape: [4, 3, 3]}\nlayers:\n"
                        f"  - {{name: n, type: cmrnorm, size: 3, alpha: {text}}}\n")
    with pytest.raises(ConfigError, match=r"must be a number, got 'small'") as error:
        engine.load("input: {shape: [4, 3, 3]}\nlayers:\n  - {name: n, type: cmrnorm, size: 3, alpha: small}\n")
    assert "YAML wants" not in str(error.value)
    net = engine.load("input: {shape: [4, 3, 3]}\nlayers:\n  - {name: n, type: cmrnorm, size: 3, alpha: 1.0e-4}\n")
    assert net.layers[0].layer.alpha == 1e-4


def test_an_init_w_whose_weights_overflow_float32_is_refused_by_name():
    # a std of 1e38 drew inf weights and training stopped at the first step, the hint blaming lr
    with pytest.raises(ConfigError, match=r"layer 'c', key 'init_w': must be <= 3e\+37, got 1e\+38"):
        engine.load("input: {shape: [1, 4, 4]}\nlayers:\n  - {name: c, type: conv, filters: 2, size: 3, "
                    "init_w: 1.0e+38}\n")
    net = engine.load("input: {shape: [1, 4, 4]}\nlayers:\n  - {name: c, type: conv, filters: 2, size: 3, "
                      "init_w: 1.0e+37, init_b: -1.0e+38}\n")
    assert all(np.isfinite(v).all() for v in net.parameters().values())


def test_dumped_net_text_loads_back_the_same():
    """The trainer stores a dict net as yaml.safe_dump text: names like 1e3 must stay names
    (a YAML 1.2 float rule added here once read them back as numbers)."""
    net = {"name": "0E0", "input": {"shape": [1, 2, 2]},
           "layers": [{"name": "1e3", "type": "neuron", "fn": "relu"}, {"name": "2E-1", "type": "softmax"}]}
    loaded = engine.load(yaml.safe_dump(net, sort_keys=False))
    assert loaded.name == "0E0" and [n.name for n in loaded.layers] == ["1e3", "2E-1"]


@given(st.integers(1, 60), st.integers(1, 60), st.integers(1, 60))
@fuzz(200)
def test_pool_macs_closed_form(side, size, stride):
    """pool.macs() summed every window (a hang for 10**9-pixel inputs); now a formula."""
    if size > side or stride > size:
        return
    layer = layer_types.get("pool")("p", {"mode": "avg", "size": size, "stride": stride}, [(1, side, side)])
    outs = layer.output_shape[1]
    reads = sum(min(o * stride + size, side) - o * stride for o in range(outs))
    assert layer.macs() == reads * reads


def test_long_chains_load_fast_and_long_cycles_stay_short():
    """A 3,000-layer chain written backwards (the order pass was quadratic), and a cycle
    through all of it (its message listed every layer: 26,000 characters)."""
    def chain(n):
        layers = [{"name": f"n{i}", "type": "neuron", "fn": "relu", "inputs": f"n{i + 1}"} for i in range(n)]
        layers[-1]["inputs"] = "data"
        return layers

    def load_time(layers):      # the best of three: a busy machine slows single runs
        times = []
        for _ in range(3):
            start = time.perf_counter()
            net = engine.load({"input": {"shape": [1, 2, 2]}, "layers": layers})
            times.append(time.perf_counter() - start)
        return net, min(times)

    _, short = load_time(chain(300))
    net, long = load_time(layers := chain(3000))
    # 10x the layers: about 10x the time if linear, 100x if quadratic (a ratio, not a wall time)
    assert long < 40 * short, (long, short)
    assert [n.name for n in net.layers[:2]] == ["n2999", "n2998"]
    layers[-1]["inputs"] = "n0"
    with pytest.raises(ConfigError, match=r"cycle: .* more \.\.\. ") as info:
        engine.load({"input": {"shape": [1, 2, 2]}, "layers": layers})
    assert len(str(info.value)) < 300


def test_wide_join_error_lists_few_inputs():
    layers = [{"name": f"c{i}", "type": "pool", "mode": "max", "size": 1 + i % 2, "stride": 1,
               "inputs": "data"} for i in range(60)]
    layers.append({"name": "j", "type": "neuron", "fn": "relu", "inputs": [f"c{i}" for i in range(60)]})
    with pytest.raises(ConfigError, match="more") as info:
        engine.load({"input": {"shape": [1, 4, 4]}, "layers": layers})
    assert info.value.layer == "j" and len(str(info.value)) < 600
