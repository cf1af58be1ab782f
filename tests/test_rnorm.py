import numpy as np
import pytest

import layers
from engine import gradcheck
from layers.rnorm import reference

# alpha large enough that the window term changes the output and the gradient visibly
STRONG = {"alpha": 4.0, "beta": 0.75, "k": 1.0}


def make(size, shape=(3, 6, 7), **cfg):
    return layers.get("rnorm")("norm", dict(size=size, **cfg), [shape])


def params(layer):
    return {k: layer.cfg[k] for k in ("alpha", "beta", "k")}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])   # the three fast paths and pow
@pytest.mark.parametrize("n", [1, 3])
def test_forward_backward_match_reference(size, beta, n):
    rng = np.random.default_rng(size * 10 + n)
    shape = (2, 6, 7)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    layer = make(size, shape, alpha=4.0, beta=beta, k=1.0)
    y = layer.forward(x, {})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, reference.forward(x64, size, 4.0, beta, 1.0), rtol=2e-5, atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(x64, g.astype(np.float64), size, 4.0, beta, 1.0),
                               rtol=2e-5, atol=1e-5)


def test_defaults_and_window():
    layer = make(3, (1, 4, 4))
    assert params(layer) == {"alpha": 1e-4, "beta": 0.75, "k": 1.0}
    # size 2: window of (y, x) = rows y-1..y, columns x-1..x; the divisor is 4 even at the edge
    x = np.ones((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 10.0
    layer = make(2, (1, 3, 3), alpha=4.0, beta=1.0, k=1.0)
    y = layer.forward(x, {})[0, 0]
    sums = np.array([[1, 2, 2], [2, 103, 103], [2, 103, 103]], np.float64)
    np.testing.assert_allclose(y, x[0, 0] / (1.0 + sums), rtol=1e-6)


@pytest.mark.parametrize("size,beta", [(3, 0.75), (2, 0.6), (4, 1.0), (5, 0.5)])
def test_gradient_finite_differences(size, beta):
    x = np.random.default_rng(size).standard_normal((2, 2, 5, 6)).astype(np.float32)
    gradcheck.check(make(size, (2, 5, 6), alpha=4.0, beta=beta, k=1.0), [x])


@pytest.mark.parametrize("size", [2, 3])
def test_reference_gradient_float64(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, 2, 4, 5))
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
    assert np.abs(ana - g * reference.denominator(x, size, 4.0, 1.0) ** -0.75).max() > 1e-2


@pytest.mark.parametrize("shape", [(3, 4, 6), (3, 6, 4)])
def test_size_larger_than_input(shape):
    make(4, (3, 4, 4))
    with pytest.raises(layers.LayerError) as e:
        make(5, shape)
    assert e.value.key == "size"
    assert e.value.message == f"normalisation window 5 larger than input {shape[1]}x{shape[2]}"


@pytest.mark.parametrize("size,cfg", [(5, {}), (3, STRONG), (2, {"alpha": 2.0, "beta": 0.6, "k": 1.0}),
                                      (4, {"alpha": 3.0, "beta": 1.0, "k": 0.5})])
def test_against_pytorch(size, cfg):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    rng = np.random.default_rng(size)
    shape = (4, 9, 7)
    x = (rng.standard_normal((3,) + shape) * 3).astype(np.float32)
    layer = make(size, shape, **cfg)
    p = params(layer)
    y = layer.forward(x, {})
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    pre, post = size // 2, size - 1 - size // 2
    if size % 2:
        # cuda-convnet's rnorm, written with PyTorch ops (odd size: symmetric padding)
        mean = F.avg_pool2d(xt * xt, size, stride=1, padding=pre, count_include_pad=True)
    else:
        # even size: the window is size//2 before and size//2 - 1 after
        mean = F.avg_pool2d(F.pad(xt * xt, (pre, post, pre, post)), size, stride=1)
    yt = xt * (p["k"] + p["alpha"] * mean) ** -p["beta"]
    yt.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=1e-5)
