"""eltmax: kernels = NumPy reference = PyTorch, ties go to the first input, finite
differences, shape checks, and a net reading its inputs separately."""
import numpy as np
import pytest
from helpers import check_net_gradients

import engine
import layers
from engine import gradcheck
from layers.eltmax import reference


def make(shapes):
    return layers.get("eltmax")("max", {}, shapes)


def distinct(count, shape, seed):
    """count arrays whose values are pairwise >= 0.1 apart (no ties: finite differences hold)."""
    rng = np.random.default_rng(seed)
    size = count * int(np.prod(shape))
    values = (rng.permutation(size) - size / 2) * 0.1
    return [a.astype(np.float32) for a in values.reshape((count,) + shape)]


@pytest.mark.parametrize("count,shape", [(2, (2, 3, 4)), (3, (3, 5)), (4, (2, 7))])
def test_forward_backward_match_reference_and_finite_differences(count, shape):
    layer = make([shape[1:]] * count)
    xs = distinct(count, shape, count)
    y = layer.forward(xs, {})
    np.testing.assert_array_equal(y, reference.forward(xs))
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    dxs, grads = layer.backward(dy, {})
    assert grads == {}
    for got, want in zip(dxs, reference.backward(xs, dy)):
        np.testing.assert_array_equal(got, want)
    declared = layer.buffer_shapes(shape[0], backward=True)
    assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
    gradcheck.check(layer, xs, h=1e-3)


def test_ties_send_the_whole_gradient_to_the_first_input():
    layer = make([(4,)] * 3)
    xs = [np.array([[1, 5, 2, 2]], np.float32), np.array([[3, 5, 2, 1]], np.float32),
          np.array([[3, 4, 2, 2]], np.float32)]
    np.testing.assert_array_equal(layer.forward(xs, {}), [[3, 5, 2, 2]])
    dxs, _ = layer.backward(np.array([[10, 20, 30, 40]], np.float32), {})
    np.testing.assert_array_equal(np.stack(dxs)[:, 0], [[0, 20, 30, 40], [10, 0, 0, 0], [0, 0, 0, 0]])
    for got, want in zip(dxs, reference.backward(xs, np.array([[10, 20, 30, 40]], np.float32))):
        np.testing.assert_array_equal(got, want)


def test_needs_two_inputs_of_one_shape():
    with pytest.raises(layers.LayerError) as e:
        make([(3,)])
    assert e.value.key == "inputs" and "at least 2" in e.value.message
    with pytest.raises(layers.LayerError) as e:
        make([(3, 2, 2), (3, 2, 3)])
    assert e.value.key == "inputs" and "same shape" in e.value.message


NET = """
name: maxout
input: {shape: [2, 4, 4]}
defaults: {init_w: 0.3}
layers:
  - {name: a, type: conv, filters: 2, size: 3, padding: 1}
  - {name: b, type: conv, filters: 2, size: 3, padding: 1, inputs: [data], gpu: 1}
  - {name: m, type: eltmax, inputs: [a, b]}
  - {name: f, type: fc, outputs: 3}
  - {name: prob, type: softmax}
"""


def test_maxout_net_gradients_match_finite_differences():
    net = engine.load(NET)
    x = np.random.default_rng(3).standard_normal((2, 2, 4, 4)).astype(np.float32)
    check_net_gradients(net, x, np.array([2, 0]), ("a.weight", "b.weight", "b.bias"),
                        h=1e-3, samples=2, rel=3e-2, abs=1e-3)


def test_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    xs = distinct(3, (2, 3, 4, 4), 7)
    layer = make([(3, 4, 4)] * 3)
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = torch.maximum(torch.maximum(ts[0], ts[1]), ts[2])
    y = layer.forward(xs, {})
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    for got, t in zip(layer.backward(dy, {})[0], ts):
        np.testing.assert_array_equal(got, t.grad.numpy())
