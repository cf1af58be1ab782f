"""cnorm (cuda-convnet's same-map contrast normalisation): kernels = NumPy reference =
PyTorch (autograd through avg pools), the exact gradient by finite differences."""
import numpy as np
import pytest

import engine
import layers
from engine import gradcheck
from layers.cnorm import reference
from layers.norm_reference import denominator

# alpha large enough that the window terms change the output and the gradient visibly
STRONG = {"alpha": 4.0, "beta": 0.75, "k": 1.0}


def make(size, shape=(3, 6, 7), **cfg):
    return layers.get("cnorm")("norm", dict(size=size, **cfg), [shape])


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
                               rtol=2e-5, atol=2e-5)


def test_defaults_and_a_window_by_hand():
    layer = make(3, (1, 4, 4))
    assert {k: layer.cfg[k] for k in ("alpha", "beta", "k")} == {"alpha": 1e-4, "beta": 0.75, "k": 1.0}
    # size 2: window of (y, x) = rows y-1..y, columns x-1..x; the mean divides by the
    # in-bounds count, the square sum by size^2 = 4 everywhere
    x = np.array([[[[1.0, 3.0], [5.0, 11.0]]]], np.float32)
    y = make(2, (1, 2, 2), alpha=4.0, beta=1.0, k=1.0).forward(x, {})[0, 0]
    u = x[0, 0] - np.array([[1.0, 2.0], [3.0, 5.0]])         # window means: 1, (1+3)/2, (1+5)/2, 20/4
    sq = u ** 2
    sums = np.array([[sq[0, 0], sq[0, 0] + sq[0, 1]],
                     [sq[0, 0] + sq[1, 0], sq.sum()]])
    np.testing.assert_allclose(y, x[0, 0] / (1.0 + sums), rtol=1e-6)


@pytest.mark.parametrize("size,beta", [(3, 0.75), (2, 0.6), (4, 1.0), (5, 0.5), (1, 0.75)])
def test_gradient_finite_differences(size, beta):
    x = np.random.default_rng(size).standard_normal((2, 2, 5, 6)).astype(np.float32)
    gradcheck.check(make(size, (2, 5, 6), alpha=4.0, beta=beta, k=1.0), [x])


@pytest.mark.parametrize("size", [2, 3])
def test_reference_gradient_float64_and_the_mean_path_matters(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, 2, 4, 5))
    g = rng.standard_normal(x.shape)
    mean = x - reference.mean_diff(x, size)

    def frozen_means(xx):     # the means held constant: what cuda-convnet's undo differentiates
        return xx * denominator(xx - mean, size, 4.0, 1.0) ** -0.75
    h = 1e-6
    num, approx = np.zeros_like(x), np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (np.sum(g * reference.forward(xp, size, **STRONG))
                    - np.sum(g * reference.forward(xm, size, **STRONG))) / (2 * h)
        approx[idx] = (np.sum(g * frozen_means(xp)) - np.sum(g * frozen_means(xm))) / (2 * h)
    np.testing.assert_allclose(reference.backward(x, g, size, **STRONG), num, rtol=1e-6, atol=1e-8)
    # cuda-convnet's convContrastNormUndo drops the path through the means: visibly off
    assert np.abs(approx - num).max() > 1e-2


@pytest.mark.parametrize("shape", [(3, 4, 6), (3, 6, 4)])
def test_size_larger_than_input(shape):
    make(4, (3, 4, 4))
    with pytest.raises(layers.LayerError) as e:
        make(5, shape)
    assert e.value.key == "size"


def test_in_a_net_and_declared_buffers():
    net = engine.load("name: t\ninput: {shape: [2, 5, 5]}\nlayers:\n"
                      "  - {name: n, type: cnorm, size: 3, alpha: 0.5}\n"
                      "  - {name: f, type: fc, outputs: 3}\n  - {name: prob, type: softmax}\n")
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    net.loss_and_grads(x, np.array([0, 2]))
    layer = net.layer("n").layer
    assert layer.macs() == 2 * 2 * 25 * 9
    declared = layer.buffer_shapes(2, train=True, backward=True, need_dx=False)
    assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
    with pytest.raises(engine.ConfigError) as e:
        engine.load("name: t\ninput: {shape: [2, 5, 5]}\nlayers:\n"
                    "  - {name: n, type: cnorm, size: 3, beta: -1}\n  - {name: prob, type: softmax}\n")
    assert (e.value.layer, e.value.key) == ("n", "beta")


@pytest.mark.parametrize("size,cfg", [(5, {}), (3, STRONG), (2, {"alpha": 2.0, "beta": 0.6, "k": 1.0}),
                                      (4, {"alpha": 3.0, "beta": 1.0, "k": 0.5})])
def test_against_pytorch(size, cfg):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    rng = np.random.default_rng(size)
    shape = (4, 9, 7)
    x = (rng.standard_normal((3,) + shape) * 3).astype(np.float32)
    layer = make(size, shape, **cfg)
    alpha, beta, k = (layer.cfg[key] for key in ("alpha", "beta", "k"))
    y = layer.forward(x, {})
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    pre, post = size // 2, size - 1 - size // 2

    def window_sum(a):        # the clipped window: size//2 before, the rest after
        return F.avg_pool2d(F.pad(a, (pre, post, pre, post)), size, stride=1) * size ** 2
    mean = window_sum(xt) / window_sum(torch.ones_like(xt))
    u = xt - mean
    yt = xt * (k + alpha * window_sum(u * u) / size ** 2) ** -beta
    yt.backward(torch.tensor(g, dtype=torch.float64))       # autograd: every path, means included
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=2e-5)
