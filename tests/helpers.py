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
              "logistic", "softrelu", "abs", "square", "sqrt"]


def neuron_inputs(fn, shape, seed=0):
    """Values 0.1 apart, none within 0.05 of a kink (0 for relu/brelu/abs, 1.5 for brelu[1.5]),
    so central differences with h = 1e-2 never straddle one; positive for sqrt."""
    size = int(np.prod(shape))
    x = (np.random.default_rng(seed).permutation(size) - size / 2 + 0.5) * 0.1
    if fn == "sqrt":
        x = np.abs(x) + 0.05
    return x.reshape(shape).astype(np.float32)


def fused_params(layer, fn, seed):
    """Small weights and a bias of 2 for sqrt, so its pre-activations are positive."""
    rng = np.random.default_rng(seed)
    p = layer.init_params(rng)
    p["weight"] = (rng.standard_normal(p["weight"].shape) * 0.3).astype(np.float32)
    shift = 2.0 if fn == "sqrt" else 0.0
    p["bias"] = (rng.standard_normal(p["bias"].shape) * 0.5 + shift).astype(np.float32)
    return p


# ---- nets ----------------------------------------------------------------------------------
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
