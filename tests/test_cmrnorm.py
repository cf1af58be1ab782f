import numpy as np
import pytest

import layers
from engine import gradcheck
from layers.cmrnorm import reference

# alpha large enough that the window term changes the output and the gradient visibly
STRONG = {"alpha": 1.5, "beta": 0.75, "k": 1.0}


def make(size, shape=(7, 5, 6), **cfg):
    return layers.get("cmrnorm")("norm", dict(size=size, **cfg), [shape])


def params(layer):
    return {k: layer.cfg[k] for k in ("alpha", "beta", "k")}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])   # the three fast paths and pow
@pytest.mark.parametrize("n", [1, 3])
def test_forward_backward_match_reference(size, beta, n):
    rng = np.random.default_rng(size * 10 + n)
    shape = (7, 5, 6)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    layer = make(size, shape, alpha=1.5, beta=beta, k=1.0)
    y = layer.forward(x, {})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, reference.forward(x64, size, 1.5, beta, 1.0), rtol=2e-5, atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(x64, g.astype(np.float64), size, 1.5, beta, 1.0),
                               rtol=2e-5, atol=1e-5)


def test_defaults_and_window():
    layer = make(3, (4, 2, 2))
    assert params(layer) == {"alpha": 1e-4, "beta": 0.75, "k": 2.0}
    # size 2: window(c) = maps c-1, c (not c, c+1), so the big map 1 divides maps 1 and 2
    x = np.ones((1, 4, 2, 2), np.float32)
    x[0, 1] = 10.0
    layer = make(2, (4, 2, 2), alpha=1.0, beta=1.0, k=1.0)
    y = layer.forward(x, {})
    d = 1.0 + 0.5 * np.array([1.0, 101.0, 101.0, 2.0])
    np.testing.assert_allclose(y[0, :, 1, 0], [1 / d[0], 10 / d[1], 1 / d[2], 1 / d[3]], rtol=1e-6)


def test_large_dynamic_range():
    # huge maps (~1e3) next to small ones (~0.1) with a small k: the running sum subtracts
    # the huge squares again and must not leave an error behind (a float32 running sum
    # leaves ~1e6 * 6e-8 = 0.06 in a sum of ~0.03, and can go negative)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 12, 3, 5)).astype(np.float32) * 0.1
    x[:, 2:4] *= 1e4
    layer = make(3, (12, 3, 5), alpha=1.0, beta=0.75, k=1e-2)
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, reference.forward(x.astype(np.float64), 3, 1.0, 0.75, 1e-2), rtol=1e-4)


@pytest.mark.parametrize("size,beta", [(3, 0.75), (4, 0.6), (5, 1.0), (1, 0.5)])
def test_gradient_finite_differences(size, beta):
    x = np.random.default_rng(size).standard_normal((2, 6, 3, 4)).astype(np.float32)
    gradcheck.check(make(size, (6, 3, 4), alpha=1.5, beta=beta, k=1.0), [x])


@pytest.mark.parametrize("size", [2, 3, 5])
def test_reference_gradient_float64(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, 6, 2, 3))
    g = rng.standard_normal(x.shape)
    h = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (np.sum(g * reference.forward(xp, size, **STRONG))
                    - np.sum(g * reference.forward(xm, size, **STRONG))) / (2 * h)
    ana = reference.backward(x, g, size, **STRONG)
    np.testing.assert_allclose(ana, num, rtol=1e-6, atol=1e-8)
    # the window term matters here: without it the gradient is visibly different
    assert np.abs(ana - g * reference.denominator(x, size, 1.5, 1.0) ** -0.75).max() > 1e-2


def test_size_larger_than_channels():
    make(7, (7, 5, 6))
    with pytest.raises(layers.LayerError) as e:
        make(8, (7, 5, 6))
    assert e.value.key == "size"
    assert e.value.message == "cross-map window 8 larger than the 7 input channels"


def test_bad_alpha_key():
    with pytest.raises(layers.LayerError) as e:
        layers.get("cmrnorm").keys["alpha"].check("alpha", -1.0)
    assert e.value.key == "alpha" and ">= 0" in e.value.message


@pytest.mark.parametrize("size,cfg", [(5, {}), (3, STRONG), (4, {"alpha": 2.0, "beta": 0.6, "k": 1.0}),
                                      (2, {"alpha": 0.5, "beta": 1.0, "k": 0.5})])
def test_against_pytorch(size, cfg):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    rng = np.random.default_rng(size)
    shape = (9, 6, 5)
    x = (rng.standard_normal((3,) + shape) * 3).astype(np.float32)
    layer = make(size, shape, **cfg)
    p = params(layer)
    y = layer.forward(x, {})
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha=p["alpha"], beta=p["beta"], k=p["k"])
    yt.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=1e-5)


def test_groups_normalise_each_block_on_its_own():
    """groups: 2 equals two separate layers on the two channel halves (the AlexNet columns)."""
    from engine import gradcheck as gc
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 8, 5, 6)).astype(np.float32) * 3
    cls = layers.get("cmrnorm")
    grouped = cls("g", {"size": 3, "groups": 2}, [(8, 5, 6)])
    half = cls("h", {"size": 3}, [(4, 5, 6)])
    y = grouped.forward(x, {}).copy()
    for i in range(2):
        np.testing.assert_allclose(y[:, 4 * i:4 * i + 4], half.forward(np.ascontiguousarray(x[:, 4 * i:4 * i + 4]), {}),
                                   rtol=1e-6)
    whole = cls("w", {"size": 3}, [(8, 5, 6)]).forward(x, {})
    assert not np.allclose(whole[:, 3], y[:, 3])   # the boundary maps differ without groups
    gc.check(grouped, [x])
    with pytest.raises(layers.LayerError) as e:
        cls("g", {"size": 3, "groups": 3}, [(8, 5, 6)])
    assert e.value.key == "groups"
    with pytest.raises(layers.LayerError) as e:
        cls("g", {"size": 5, "groups": 2}, [(8, 5, 6)])
    assert e.value.key == "size" and "per group" in e.value.message


@pytest.mark.parametrize("size,shape", [(1, (3, 4, 5)), (2, (4, 37, 29)), (5, (5, 2, 3)),
                                        (4, (9, 33, 17)), (7, (7, 1, 1100)), (6, (16, 3, 7))])
@pytest.mark.parametrize("n", [1, 2, 40])
def test_serial_twin_matches_parallel_and_reference(size, shape, n):
    """Size up to the channel count, odd/even sizes, non-square planes, planes split into
    several pixel chunks (37x29, 1x1100), batches with fewer and more tasks than workers:
    the serial twin (column mode) gives exactly the parallel kernel's result."""
    from layers import threads
    rng = np.random.default_rng(size * 100 + n)
    x = (rng.standard_normal((n,) + shape) * 3).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    out = []
    for serial in (False, True):
        layer = make(size, shape, **STRONG)
        with threads.serial(serial):
            y = layer.forward(x, {}).copy()
            dx, _ = layer.backward(g, {})
        out.append((y, dx.copy()))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(out[0][0], reference.forward(x64, size, **STRONG), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(out[0][1], reference.backward(x64, g.astype(np.float64), size, **STRONG),
                               rtol=2e-5, atol=1e-5)
