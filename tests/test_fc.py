import numpy as np
import pytest

import layers
from engine import gradcheck
from layers.fc import reference

FNS = ["relu", "tanh", "logistic", "abs", "linear", None]


def make(outputs, input_shapes, fn=None, **cfg):
    return layers.get("fc")("fc", dict(outputs=outputs, neuron=fn, **cfg), input_shapes)


def params_for(layer, seed, w_std=0.3):
    """Weights big enough that pre-activations sit well away from the relu/abs kink."""
    rng = np.random.default_rng(seed)
    p = layer.init_params(rng)
    p["weight"] = (rng.standard_normal(p["weight"].shape) * w_std).astype(np.float32)
    p["bias"] = rng.standard_normal(p["bias"].shape).astype(np.float32)
    return p


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("n", [1, 5])
def test_forward_backward_match_reference_spatial(fn, n):
    # a spatial [N, C, H, W] input, flattened in C, H, W order by the join rule
    rng = np.random.default_rng(n)
    layer = make(13, [(3, 5, 7)], fn)
    assert layer.input_shape == (105,) and layer.output_shape == (13,)
    p = params_for(layer, 1)
    x = rng.standard_normal((n, 3, 5, 7)).astype(np.float32)
    xj = layers.join_inputs(layer, [x])
    y = layer.forward(xj, p)
    y_ref, a = reference.forward(x.reshape(n, -1).astype(np.float64), p["weight"], p["bias"], fn)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(g, p)
    dx_ref, dw_ref, db_ref = reference.backward(g, x.reshape(n, -1), p["weight"], a, fn)
    assert set(grads) == {"weight", "bias"}
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], dw_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], db_ref, rtol=1e-4, atol=1e-5)
    (dx_in,) = layers.split_grad(layer, dx, layer.input_shapes)
    assert dx_in.shape == x.shape


def test_two_inputs_joined_flat():
    rng = np.random.default_rng(7)
    shapes = [(3, 4, 5), (7,)]
    layer = make(9, shapes, "tanh")
    assert layer.input_shape == (67,)
    p = params_for(layer, 2)
    xs = [rng.standard_normal((5,) + s).astype(np.float32) for s in shapes]
    xj = layers.join_inputs(layer, xs)
    flat = np.concatenate([xs[0].reshape(5, -1), xs[1]], axis=1)
    np.testing.assert_array_equal(xj, flat)
    y = layer.forward(xj, p)
    y_ref, a = reference.forward(flat, p["weight"], p["bias"], "tanh")
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, p)
    dx_ref = reference.backward(g, flat, p["weight"], a, "tanh")[0]
    d0, d1 = layers.split_grad(layer, dx, layer.input_shapes)
    np.testing.assert_allclose(d0, dx_ref[:, :60].reshape(5, 3, 4, 5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d1, dx_ref[:, 60:], rtol=1e-4, atol=1e-5)
    gradcheck.check(layer, xs, p)


@pytest.mark.parametrize("fn", FNS)
def test_gradient_finite_differences(fn):
    layer = make(11, [(2, 3, 5)], fn)
    x = np.random.default_rng(3).standard_normal((3, 2, 3, 5)).astype(np.float32)
    errors = gradcheck.check(layer, [x], params_for(layer, 4))
    assert set(errors) == {"input0", "weight", "bias"}


@pytest.mark.parametrize("fn", FNS)
def test_reference_gradient_float64(fn):
    # the reference backward, in float64, against central differences of L = sum(g * y)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6))
    w = rng.standard_normal((4, 6))
    b = rng.standard_normal(4)
    g = rng.standard_normal((3, 4))
    _, a = reference.forward(x, w, b, fn)
    dx, dw, db = reference.backward(g, x, w, a, fn)
    h = 1e-6

    def num(arr):
        out = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = np.sum(g * reference.forward(x, w, b, fn)[0])
            arr[i] = old - h
            down = np.sum(g * reference.forward(x, w, b, fn)[0])
            arr[i] = old
            out[i] = (up - down) / (2 * h)
        return out

    for ana, arr in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(ana, num(arr), rtol=1e-6, atol=1e-7)


def test_no_dx_zero_bias_and_batch_change():
    layer = make(5, [(8,)], "relu")
    p = params_for(layer, 6)
    p["bias"][:] = 0.0
    rng = np.random.default_rng(8)
    for n in (4, 1, 4):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = layer.forward(x, p)
        np.testing.assert_allclose(y, np.maximum(x @ p["weight"].T, 0), rtol=1e-5, atol=1e-6)
        dx, grads = layer.backward(np.ones_like(y), p, need_dx=False)
        assert dx is None
        np.testing.assert_allclose(grads["bias"], (y > 0).sum(0), rtol=1e-6)


def test_keys_params_and_macs():
    layer = make(10, [(3, 4, 4)], init_w=0.5, init_b=0.25)
    assert layer.param_shapes() == {"weight": (10, 48), "bias": (10,)}
    assert layer.macs() == 480
    p = layer.init_params(np.random.default_rng(0))
    assert p["weight"].dtype == np.float32 and p["bias"].dtype == np.float32
    assert 0.4 < p["weight"].std() < 0.6
    np.testing.assert_array_equal(p["bias"], 0.25)
    defaults = layers.get("fc")("fc", {"outputs": 3}, [(4,)])
    assert defaults.cfg["neuron"] is None and defaults.cfg["init_w"] == 0.01


@pytest.mark.parametrize("cfg, key", [
    ({"outputs": 0}, "outputs"),
    ({"outputs": -3}, "outputs"),
    ({"outputs": 2.5}, "outputs"),
    ({}, "outputs"),
    ({"outputs": 4, "neuron": "softplus"}, "neuron"),
    ({"outputs": 4, "init_w": -1.0}, "init_w"),
])
def test_bad_keys(cfg, key):
    with pytest.raises(layers.LayerError) as e:
        layers.get("fc")("fc", cfg, [(6,)])
    assert e.value.key == key


TORCH_ACT = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "abs": "abs", "linear": None}


@pytest.mark.parametrize("fn", list(TORCH_ACT))
def test_matches_pytorch_linear(fn):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    rng = np.random.default_rng(11)
    layer = make(17, [(3, 5, 5)], fn)
    p = params_for(layer, 12, w_std=0.1)
    x = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    g = rng.standard_normal((6, 17)).astype(np.float32)
    y = layer.forward(layers.join_inputs(layer, [x]), p)
    dx, grads = layer.backward(g, p)

    tx = torch.tensor(x.reshape(6, -1), dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(p["weight"], dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(p["bias"], dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    if TORCH_ACT[fn] is not None:
        ty = getattr(torch, TORCH_ACT[fn])(ty)
    (ty * torch.tensor(g, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], tb.grad.numpy(), rtol=1e-4, atol=1e-5)
