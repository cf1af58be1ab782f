import numpy as np
import pytest

import layers
from engine import gradcheck
from layers.softmax import reference


def make(input_shapes):
    return layers.get("softmax")("probs", {}, input_shapes)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("shape", [(13,), (3, 2, 5)])
def test_forward_cost_backward_match_reference(n, shape):
    rng = np.random.default_rng(n)
    layer = make([shape])
    d = int(np.prod(shape))
    assert layer.output_shape == (d,) and layer.is_cost
    x = (rng.standard_normal((n,) + shape) * 3).astype(np.float32)
    flat = x.reshape(n, -1)
    p = layer.forward(layers.join_inputs(layer, [x]), {})
    np.testing.assert_allclose(p, reference.forward(flat.astype(np.float64)), rtol=1e-5, atol=1e-7)
    labels = rng.integers(0, d, n)
    loss, dx = layer.cost(labels)
    loss_ref, dx_ref = reference.cost(flat, labels)
    assert isinstance(loss, float)
    assert dx.dtype == np.float32 and dx.shape == (n, d)
    assert abs(loss - loss_ref) < 1e-6 * max(1.0, loss_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-7)
    g = rng.standard_normal((n, d)).astype(np.float32)
    dxb, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dxb, reference.backward(p.astype(np.float64), g), rtol=1e-4, atol=1e-6)


def test_two_inputs_joined_flat():
    rng = np.random.default_rng(2)
    shapes = [(2, 3, 3), (4,)]
    layer = make(shapes)
    assert layer.input_shape == (22,)
    xs = [rng.standard_normal((4,) + s).astype(np.float32) for s in shapes]
    flat = np.concatenate([xs[0].reshape(4, -1), xs[1]], axis=1)
    p = layer.forward(layers.join_inputs(layer, xs), {})
    np.testing.assert_allclose(p, reference.forward(flat), rtol=1e-5, atol=1e-7)
    labels = np.array([0, 21, 18, 5])
    gradcheck.check(layer, xs, labels=labels)


def test_rows_sum_to_one_and_large_logits():
    x = np.array([[1000.0, 1000.0, 999.0],
                  [-1000.0, 0.0, 1000.0],
                  [88.0, 89.0, -89.0],
                  [-1000.0, -1000.0, -1000.0]], np.float32)
    layer = make([(3,)])
    p = layer.forward(x, {})
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, reference.forward(x.astype(np.float64)), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(p[3], 1 / 3, rtol=1e-6)
    labels = np.array([2, 0, 1, 1])
    loss, dx = layer.cost(labels)
    # row 1 with label 0 costs 2000 nats; exact in float64 from the kept logits
    expected = np.mean([1 + np.log(2 + np.exp(-1)), 2000.0, np.log1p(np.exp(-1) + np.exp(-178)),
                        np.log(3)])
    assert np.isfinite(loss) and abs(loss - expected) < 1e-6 * expected
    assert np.all(np.isfinite(dx))


def test_cost_is_mean_negative_log_probability():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 10)).astype(np.float32)
    layer = make([(10,)])
    p = layer.forward(x, {})
    labels = rng.integers(0, 10, 7).astype(np.int32)
    loss, dx = layer.cost(labels)
    assert abs(loss + np.mean(np.log(p[np.arange(7), labels].astype(np.float64)))) < 1e-5
    onehot = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_allclose(dx, (p - onehot) / 7, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx.sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 1, 10]), "label 10 .*10 classes"),
    (np.array([0, -1, 2]), "label -1 .*10 classes"),
    (np.array([0.0, 1.0, 2.0]), "integers"),
    (np.array([[0, 1, 2]]), "1-D"),
    (np.array([0, 1]), "2 labels for a batch of 3"),
    (np.array([True, False, True]), "integers"),
])
def test_bad_labels_raise(labels, match):
    layer = make([(10,)])
    layer.forward(np.zeros((3, 10), np.float32), {})
    with pytest.raises(ValueError, match=match):
        layer.cost(labels)


def test_gradient_finite_differences_cost():
    x = (np.random.default_rng(4).standard_normal((5, 3, 2, 2)) * 2).astype(np.float32)
    gradcheck.check(make([(3, 2, 2)]), [x], labels=np.array([0, 11, 5, 5, 7]))


def test_gradient_finite_differences_backward():
    # as a non-final layer: backward is the softmax Jacobian-vector product
    x = (np.random.default_rng(5).standard_normal((4, 9)) * 2).astype(np.float32)
    layer = make([(9,)])
    layer.is_cost = False
    gradcheck.check(layer, [x])


def test_reference_gradients_float64():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5)) * 2
    labels = np.array([4, 0, 2])
    g = rng.standard_normal((3, 5))
    h = 1e-6
    num_cost, num_jvp = np.zeros_like(x), np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num_cost[i] = (reference.cost(xp, labels)[0] - reference.cost(xm, labels)[0]) / (2 * h)
        num_jvp[i] = (np.sum(g * reference.forward(xp)) - np.sum(g * reference.forward(xm))) / (2 * h)
    np.testing.assert_allclose(reference.cost(x, labels)[1], num_cost, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(reference.backward(reference.forward(x), g), num_jvp, rtol=1e-6, atol=1e-8)


def test_no_keys_and_cost_before_forward():
    assert list(layers.get("softmax").keys) == ["label_smoothing"]      # tests/test_label_smoothing.py
    layer = make([(4,)])
    with pytest.raises(RuntimeError):
        layer.cost(np.array([0]))
    layer.forward(np.zeros((2, 4), np.float32), {})
    assert layer.backward(np.ones((2, 4), np.float32), {}, need_dx=False) == (None, {})


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_matches_pytorch_cross_entropy(scale):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((9, 21)) * scale).astype(np.float32)
    labels = rng.integers(0, 21, 9)
    layer = make([(21,)])
    p = layer.forward(x, {})
    loss, dx = layer.cost(labels)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(labels), reduction="mean")
    tloss.backward()
    np.testing.assert_allclose(p, torch.softmax(tx, 1).detach().numpy(), rtol=1e-5, atol=1e-7)
    assert abs(loss - tloss.item()) < 1e-6 * max(1.0, tloss.item())
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-7)
