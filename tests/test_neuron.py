import numpy as np
import pytest

import layers
from layers import gradcheck
from layers.neuron import reference

FNS = ["relu", "tanh", "logistic", "abs", "linear"]


def make(fn, shape=(3, 5, 7)):
    return layers.get("neuron")("act", {"fn": fn}, [shape])


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("n", [1, 4])
def test_forward_backward_match_reference(fn, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3, 5, 7)).astype(np.float32)
    layer = make(fn)
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, reference.forward(fn, x), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(x.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(fn, g, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", FNS)
def test_gradient_finite_differences(fn):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 7)).astype(np.float32)
    gradcheck.check(make(fn), [x])


@pytest.mark.parametrize("fn", FNS)
def test_reference_gradient_float64(fn):
    # the reference itself, in float64, against central differences
    rng = np.random.default_rng(5)
    a = rng.standard_normal(50)
    g = rng.standard_normal(50)
    h = 1e-6
    num = (np.sum(g * reference.forward(fn, a + h)) - np.sum(g * reference.forward(fn, a - h))) / (2 * h)
    # a directional derivative along the all-ones direction
    assert abs(num - np.sum(reference.backward(fn, g, a))) < 1e-5 * max(1, abs(num))


def test_flat_input_and_unknown_fn():
    layer = layers.get("neuron")("act", {"fn": "tanh"}, [(10,)])
    x = np.linspace(-2, 2, 20, dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(layer.forward(x, {}), np.tanh(x), rtol=1e-6)
    with pytest.raises(layers.LayerError) as e:
        layers.get("neuron").keys["fn"].check("fn", "softplus")
    assert "relu" in str(e.value)
