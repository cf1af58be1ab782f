"""Helpers shared by the test modules (tests/ and tests/cuda/ have tests/ on the path)."""
import importlib

import numpy as np
import pytest

import layers

FULL = False     # `python -m pytest --full`: set by conftest.py before any test module is imported


# ---- comparisons ---------------------------------------------------------------------------
def close(actual, expected, rtol=1e-4, atol=1e-5):
    """allclose with atol scaled by the expected magnitude: float32 sums of many products
    err in proportion to the result's size."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(expected).max())))


def close_abs(got, want, rtol=1e-5, atol=1e-6):
    """allclose with a fixed atol; NaN where NaN and inf where inf."""
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---- inputs --------------------------------------------------------------------------------
def distinct(shape, seed=0, gap=0.1):
    """Values pairwise >= gap apart, none within gap/2 of 0 (no ties, no relu/abs kink)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2 + 0.5) * gap).reshape(shape).astype(np.float32)


# every neuron function, with and without parameters where it takes them
NEURON_FNS = ["ident", "linear", "linear[2.5,-0.5]", "relu", "brelu[1.5]", "tanh", "tanh[1.7159,0.6667]",
              "logistic", "softrelu", "abs", "square", "sqrt", "leaky", "leaky[0.2]", "leaky[0]", "elu",
              "elu[0.5]", "selu"]


def neuron_inputs(fn, shape, seed=0):
    """Values 0.1 apart, none within 0.05 of a kink (0 for relu/brelu/abs, 1.5 for brelu[1.5]),
    so central differences with h = 1e-2 never straddle one; positive for sqrt."""
    size = int(np.prod(shape))
    x = (np.random.default_rng(seed).permutation(size) - size / 2 + 0.5) * 0.1
    if fn == "sqrt":
        x = np.abs(x) + 0.05
    return x.reshape(shape).astype(np.float32)


def sums_off_kinks(xs, coeffs, gap=0.1):
    """Shift xs[0] (in place) so that every sum of coeffs[i] * xs[i] is at least `gap` from 0,
    relu's and abs's kink: central differences (h = 1e-2, coefficients up to 2) never straddle it."""
    total = sum(np.float64(c) * x.astype(np.float64) for c, x in zip(coeffs, xs))
    xs[0] += ((np.where(total < 0, -1, 1) * (np.abs(total) + gap) - total) / coeffs[0]).astype(np.float32)
    return xs


def fused_params(layer, fn, seed):
    """Small weights and a bias of 2 for sqrt, so its pre-activations are positive."""
    rng = np.random.default_rng(seed)
    p = layer.init_params(rng)
    p["weight"] = (rng.standard_normal(p["weight"].shape) * 0.3).astype(np.float32)
    shift = 2.0 if fn == "sqrt" else 0.0
    p["bias"] = (rng.standard_normal(p["bias"].shape) * 0.5 + shift).astype(np.float32)
    return p


# ---- nets ----------------------------------------------------------------------------------
# ---- conv and local layers against their NumPy references ----------------------------------
def filter_layer_case(type_name, n, c, h, w, seed=0, **cfg):
    """(layer, params, x, rng): a `type_name` layer (conv, local) of `cfg` on [c, h, w]
    inputs, its parameters with a random bias where it has one (a zero bias would hide a
    wrong bias gradient), and a batch of n, all drawn from one rng in that order."""
    rng = np.random.default_rng(seed)
    layer = layers.get(type_name)(type_name, cfg, [(c, h, w)])
    params = layer.init_params(rng)
    if "bias" in params:
        params["bias"][:] = rng.standard_normal(params["bias"].shape)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return layer, params, x, rng


def filter_ref_args(layer, params, *keys):
    """The reference's arguments after x, in float64: weight, bias (None without one),
    stride, padding, groups, neuron, then the layer's values of `keys` (conv's
    channel_sets, local's padding_end)."""
    c, bias = layer.cfg, params.get("bias")
    return ((params["weight"].astype(np.float64), None if bias is None else bias.astype(np.float64),
             c["stride"], c["padding"], c["groups"], c["neuron"]) + tuple(c[k] for k in keys))


def check_filter_layer(layer, params, x, rng, reference, *keys):
    """The layer's forward and backward (dx, weight and bias gradients, no bias gradient
    without a bias) equal its NumPy reference's (the module `reference`)."""
    args = filter_ref_args(layer, params, *keys)
    y = layer.forward(x, params)
    assert y.shape == (x.shape[0],) + layer.output_shape
    x64 = x.astype(np.float64)
    close(y, reference.forward(x64, *args))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x64, *args)
    close(dx, rdx)
    close(grads["weight"], rdw)
    if rdb is None:
        assert set(grads) == {"weight"}
    else:
        assert grads["bias"].shape == params["bias"].shape
        close(grads["bias"], rdb)


def check_net_gradients(net, x, labels, keys, h, samples, rel, abs):
    """The net's parameter gradients against central differences of its loss."""
    rng = np.random.default_rng(0)
    _, grads = net.gradients(x, labels)
    params = net.parameters()
    for key in keys:
        for flat in rng.choice(params[key].size, min(samples, params[key].size), replace=False):
            idx = np.unravel_index(flat, params[key].shape)
            old = params[key][idx]
            params[key][idx] = old + h
            up = net.gradients(x, labels)[0]
            params[key][idx] = old - h
            down = net.gradients(x, labels)[0]
            params[key][idx] = old
            assert (up - down) / (2 * h) == pytest.approx(grads[key][idx], rel=rel, abs=abs), (key, idx)


EXAMPLE_INPUT = (6, 9, 9)   # what every layer type's `examples` configs must accept


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of `python -m engine ARGV` run in this process."""
    from engine.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def missing_examples():
    # its own: a subclass (cnorm of rnorm) inherits its parent's, which tests nothing new
    return [t for t, cls in sorted(layers.REGISTRY.items()) if not cls.__dict__.get("examples")]


def example_net(cost, skip=()):
    """A net dict holding every registered layer type but the cost layers, one layer per config
    in its class's `examples`, and `cost` as the output. A conv makes the EXAMPLE_INPUT-shaped
    input of each (two for join "separate" types); an fc reads them all."""
    assert not missing_examples(), (
        f"layer types without `examples`: {missing_examples()}; give each class a tuple of "
        f"configs valid on a {list(EXAMPLE_INPUT)} input (see layers/base.py, Layer.examples)")
    c, h, w = EXAMPLE_INPUT
    body, ends = [], []
    for type_name, cls in sorted(layers.REGISTRY.items()):
        if cls.is_cost or type_name in skip:
            continue
        for k, cfg in enumerate(cls.examples):
            name = f"{type_name}{k}"
            sources = [f"{name}_in{j}" for j in range(2 if cls.join == "separate" else 1)]
            body += [{"name": src, "type": "conv", "inputs": ["data"], "filters": c, "size": 3,
                      "padding": 1, "neuron": "tanh"} for src in sources]
            body.append(dict(cfg, name=name, type=type_name, inputs=sources))
            ends.append(name)
    top = {"name": "top", "type": "fc", "inputs": ends, "outputs": 5, "init_w": 0.1}
    return {"name": f"every-type-{cost}", "input": {"shape": [3, h, w]},
            "defaults": {"init_w": 0.3, "init_b": 0.1},
            "layers": body + [top, dict(layers.get(cost).examples[0], name="cost", type=cost)]}


# ---- CUDA (import numba.cuda only when called: the simulator must be chosen first) ----------
def to_dev(a, dtype=np.float32):
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def host(d):
    return d.copy_to_host()


def cuda_impl(layer):
    return importlib.import_module(f"layers.{layer.type}.cuda").make(layer)


class OnDevice:
    """The CPU layer's face over its CUDA twin (host arrays in and out), for
    engine.gradcheck: finite differences of the device kernels themselves."""

    def __init__(self, layer, stream, seed=0):
        self.layer, self.impl, self.stream, self.seed = layer, cuda_impl(layer), stream, seed

    def __getattr__(self, name):          # type, name, join, shapes, is_cost
        return getattr(self.layer, name)

    def forward(self, x, params, train=False, rng=None):
        xin = [to_dev(a) for a in x] if isinstance(x, list) else to_dev(x)
        self.params = {k: to_dev(v) for k, v in params.items()}
        y = host(self.impl.forward(xin, self.params, train, self.seed, self.stream))
        self.stream.synchronize()
        return y

    def backward(self, dy, params, need_dx=True):
        dx, grads = self.impl.backward(to_dev(dy), self.params, need_dx, self.stream)
        out = [host(d) for d in dx] if isinstance(dx, list) else host(dx)
        self.stream.synchronize()
        return out, {k: host(g) for k, g in grads.items()}


# ---- nets of several columns and the same weights folded onto one ---------------------------
# AlexNet's wiring on N columns (gpu: 0..N-1): per column a conv on the data, cmrnorm over the
# column's own maps and a max pool; per column a conv reading every column's pool and an fc
# reading every column's conv; one fc reading every column, then the softmax. Each column
# holds its slice of the filters / outputs (c2 and f3 in unequal slices, so a fold in the
# wrong order cannot pass). Folded onto one column: the same layers with the slices
# concatenated in column order, cmrnorm with `groups: N` (each column normalises its own maps).
COLUMN_LETTERS = "abcdefgh"
MANY_COLUMNS_INPUT = (2, 5, 5)       # pool 3/2: 2x2 maps after p1
MANY_COLUMNS_CLASSES = 3
MANY_COLUMNS_C1 = 2                    # filters per column (equal: cmrnorm groups on the fold)
MANY_COLUMNS_C2 = (2, 3, 2, 3)         # filters of c2<letter>, column by column
MANY_COLUMNS_F3 = (3, 4, 3, 5)         # outputs of f3<letter>, column by column
MANY_COLUMNS_FOLDED = ("c1", "c2", "f3")   # folded layers: column layers "<name><letter>" joined


def many_columns_net(n):
    """YAML text of the net on n (2..4) columns."""
    letters = COLUMN_LETTERS[:n]
    c, h, w = MANY_COLUMNS_INPUT
    lines = [f"name: {n}-columns", f"input: {{shape: [{c}, {h}, {w}]}}",
             "defaults: {init_w: 0.3, init_b: 0.05}", "layers:"]
    for k, a in enumerate(letters):
        lines += [
            f"  - {{name: c1{a}, type: conv, inputs: [data], gpu: {k}, filters: {MANY_COLUMNS_C1}, size: 3, "
            "padding: 1, neuron: relu}",
            f"  - {{name: n1{a}, type: cmrnorm, gpu: {k}, size: 2, alpha: 0.5, k: 2}}",
            f"  - {{name: p1{a}, type: pool, gpu: {k}, mode: max, size: 3, stride: 2}}"]
    pools = ", ".join(f"p1{a}" for a in letters)
    convs = ", ".join(f"c2{a}" for a in letters)
    for k, a in enumerate(letters):
        lines.append(f"  - {{name: c2{a}, type: conv, inputs: [{pools}], gpu: {k}, filters: {MANY_COLUMNS_C2[k]}, "
                     "size: 3, padding: 1, neuron: tanh}")
    for k, a in enumerate(letters):
        lines.append(f"  - {{name: f3{a}, type: fc, inputs: [{convs}], gpu: {k}, outputs: {MANY_COLUMNS_F3[k]}, "
                     "neuron: relu}")
    fcs = ", ".join(f"f3{a}" for a in letters)
    lines += [f"  - {{name: f4, type: fc, inputs: [{fcs}], gpu: 0, outputs: {MANY_COLUMNS_CLASSES}}}",
              "  - {name: prob, type: softmax, gpu: 0}"]
    return "\n".join(lines) + "\n"


def folded_net(n):
    """YAML text of many_columns_net(n) folded onto one column."""
    c, h, w = MANY_COLUMNS_INPUT
    return "\n".join([
        f"name: {n}-columns-folded", f"input: {{shape: [{c}, {h}, {w}]}}", "layers:",
        f"  - {{name: c1, type: conv, filters: {MANY_COLUMNS_C1 * n}, size: 3, padding: 1, neuron: relu}}",
        f"  - {{name: n1, type: cmrnorm, size: 2, alpha: 0.5, k: 2, groups: {n}}}",
        "  - {name: p1, type: pool, mode: max, size: 3, stride: 2}",
        f"  - {{name: c2, type: conv, filters: {sum(MANY_COLUMNS_C2[:n])}, size: 3, padding: 1, neuron: tanh}}",
        f"  - {{name: f3, type: fc, outputs: {sum(MANY_COLUMNS_F3[:n])}, neuron: relu}}",
        f"  - {{name: f4, type: fc, outputs: {MANY_COLUMNS_CLASSES}}}",
        "  - {name: prob, type: softmax}"]) + "\n"


THREE_COLUMNS, FOUR_COLUMNS = many_columns_net(3), many_columns_net(4)
THREE_FOLDED, FOUR_FOLDED = folded_net(3), folded_net(4)


def column_names(name, n):
    """The column layers that the folded layer `name` concatenates, in column order."""
    return [f"{name}{a}" for a in COLUMN_LETTERS[:n]]


def fold_columns(state, n):
    """The folded net's state dict from the n-column net's (or its gradients): each column's
    filters / output rows concatenated in column order (axis 0 of conv weight
    [filters, channels, size, size], fc weight [outputs, inputs] and the biases). The input
    axis needs no reordering: a layer reading every column reads their outputs joined in
    column order (channels for a conv, flattened C, H, W for an fc), as the folded layer reads
    the folded producer's. Layers outside the columns (f4) keep their arrays."""
    folded, used = {}, []
    for name in MANY_COLUMNS_FOLDED:
        for p in ("weight", "bias"):
            keys = [f"{col}.{p}" for col in column_names(name, n)]
            folded[f"{name}.{p}"] = np.concatenate([state[k] for k in keys])
            used += keys
    for p in ("weight", "bias"):
        folded[f"f4.{p}"] = state[f"f4.{p}"]
        used.append(f"f4.{p}")
    assert sorted(used) == sorted(state), "the fold must use every array of the columns, once"
    return folded


def fold_activation(acts, name, n):
    """The folded layer's activation from the column layers' (`acts`: name -> array):
    concatenated along the channels / units."""
    return np.concatenate([acts[col] for col in column_names(name, n)], axis=1)


def many_columns_batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + MANY_COLUMNS_INPUT).astype(np.float32),
            rng.integers(0, MANY_COLUMNS_CLASSES, n))
