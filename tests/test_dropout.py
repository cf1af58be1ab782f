import numpy as np
import pytest

import layers
from engine import gradcheck
from layers.draw_key import DrawKey
from layers.dropout import reference


def make(shape, rate=0.5):
    cfg = {} if rate is None else {"rate": rate}
    return layers.get("dropout")("drop", cfg, [shape])


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (5, 3, 5, 7), (5, 11)])
def test_forward_backward_match_reference(rate, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    layer = make(shape[1:], rate)
    y = layer.forward(x, {}, train=True, rng=DrawKey(42, epoch=1, step=3))
    keep = reference.kept("drop", shape, rate, 42, epoch=1, step=3)      # the NumPy generator
    y_ref, m_ref = reference.forward(x, keep, rate)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=0)
    g = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(g, m_ref), rtol=1e-6, atol=0)


def test_statistics_on_a_big_tensor():
    # 2**20 units: the kept count is Binomial(n, 1 - rate), its fraction has
    # std sqrt(rate (1 - rate) / n) ~ 4.5e-4; allow 5 std (a false failure ~ 6e-7).
    rate, n = 0.3, 1 << 20
    x = np.full((16, 4, 128, 128), 2.0, np.float32)
    layer = make(x.shape[1:], rate)
    y = layer.forward(x, {}, train=True, rng=DrawKey(0))
    kept = y != 0
    std_frac = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * std_frac
    # kept units are scaled by 1 / (1 - rate)
    np.testing.assert_allclose(y[kept], 2.0 / (1 - rate), rtol=1e-6)
    # E[y] = x: mean(y) = 2 * kept_fraction / (1 - rate), std 2 * std_frac / (1 - rate)
    assert abs(y.mean(dtype=np.float64) - 2.0) < 5 * 2.0 * std_frac / (1 - rate)
    # units are dropped independently of position: each channel's kept fraction agrees too
    per_channel = kept.mean(axis=(0, 2, 3))
    assert np.all(np.abs(per_channel - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / (n / 4)))


def test_expectation_per_element():
    # averaged over many masks, y approaches x element by element
    rate, draws = 0.5, 400
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    layer = make(x.shape[1:], rate)
    acc = np.zeros(x.shape)
    for step in range(draws):
        acc += layer.forward(x, {}, train=True, rng=DrawKey(4, step=step))
    # per element std of the mean: |x| * sqrt(rate / (1 - rate) / draws) = |x| / 20
    assert np.all(np.abs(acc / draws - x) < 5 * np.abs(x) / 20 + 1e-6)


def test_identity_at_test_time():
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    layer = make((6,), 0.5)
    np.testing.assert_array_equal(layer.forward(x, {}), x)
    np.testing.assert_array_equal(layer.forward(x, {}, train=False, rng=DrawKey(0)), x)
    g = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(g, {})[0], g)
    # a training pass, then a test pass: the backward follows the latest forward
    layer.forward(x, {}, train=True, rng=DrawKey(0))
    assert np.any(layer.backward(g, {})[0] == 0)
    layer.forward(x, {}, train=False)
    np.testing.assert_array_equal(layer.backward(g, {})[0], g)
    assert layer.backward(g, {}, need_dx=False) == (None, {})


def test_same_key_same_mask_and_key_required():
    x = np.ones((8, 3, 5, 5), np.float32)
    layer = make(x.shape[1:], 0.5)
    a = layer.forward(x, {}, train=True, rng=DrawKey(9, 1, 2)).copy()
    b = layer.forward(x, {}, train=True, rng=DrawKey(9, 1, 2)).copy()
    c = layer.forward(x, {}, train=True, rng=DrawKey(9, 1, 3)).copy()
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    # an int seed is DrawKey(seed)
    seeded = layer.forward(x, {}, train=True, rng=9).copy()
    np.testing.assert_array_equal(seeded, layer.forward(x, {}, train=True, rng=DrawKey(9)))
    with pytest.raises(ValueError, match="draw key"):
        layer.forward(x, {}, train=True)
    with pytest.raises(TypeError, match="DrawKey or an integer seed, got Generator"):
        layer.forward(x, {}, train=True, rng=np.random.default_rng(9))


@pytest.mark.parametrize("shape", [(3, 4, 5), (9,)])
def test_gradient_finite_differences_in_training(shape):
    # gradcheck passes the same seed to every forward, so the mask stays put
    x = np.random.default_rng(6).standard_normal((3,) + shape).astype(np.float32)
    gradcheck.check(make(shape, 0.4), [x], train=True)


def test_reference_gradient_float64():
    rng = np.random.default_rng(7)
    x, keep, g = rng.standard_normal(30), rng.random(30) >= 0.3, rng.standard_normal(30)
    _, m = reference.forward(x, keep, 0.3)
    h = 1e-6
    num = np.array([(np.sum(g * reference.forward(x + h * e, keep, 0.3)[0])
                     - np.sum(g * reference.forward(x - h * e, keep, 0.3)[0])) / (2 * h)
                    for e in np.eye(30)])
    np.testing.assert_allclose(reference.backward(g, m), num, rtol=1e-6, atol=1e-7)


def test_default_rate_and_bad_rates():
    assert make((4,), None).cfg["rate"] == 0.5
    for bad in (1.0, 1.5, -0.1, "half", True):
        with pytest.raises(layers.LayerError) as e:
            make((4,), bad)
        assert e.value.key == "rate"
    with pytest.raises(layers.LayerError, match="< 1"):
        make((4,), 1.0)
