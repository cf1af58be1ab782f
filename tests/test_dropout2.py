"""dropout2 (classic dropout): a 0/1 mask from the pass's draw key in training, x keep at
test; kernels = NumPy reference, finite differences, statistics, keys, and in a net."""
import numpy as np
import pytest

import engine
import layers
from engine import gradcheck
from layers.draw_key import DrawKey
from layers.dropout import reference as dropout_ref
from layers.dropout2 import reference


def make(shape=(3, 4, 5), **cfg):
    return layers.get("dropout2")("drop", cfg, [shape])


@pytest.mark.parametrize("keep", [0.5, 0.2, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(3, 4, 5), (17,)])
def test_forward_backward_match_reference(keep, shape):
    layer = make(shape, keep=keep)
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    y = layer.forward(x, {}, train=True, rng=DrawKey(5, 2, 7, sample_offset=3))
    kept = dropout_ref.kept("drop", x.shape, 1.0 - keep, 5, 2, 7, sample_offset=3)  # the same draws
    want, mask = reference.forward_train(x, kept)
    np.testing.assert_array_equal(y, want)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy, {})[0], reference.backward(dy, mask))
    if keep == 1.0:
        np.testing.assert_array_equal(y, x)
    # test time: every unit x keep, and so is the gradient
    np.testing.assert_array_equal(layer.forward(x, {}), reference.forward_test(x, keep))
    np.testing.assert_array_equal(layer.backward(dy, {})[0], reference.backward(dy, np.float32(keep)))


def test_statistics_and_no_scaling():
    layer = make((100, 100), keep=0.3)
    x = np.ones((10, 100, 100), np.float32)
    y = layer.forward(x, {}, train=True, rng=DrawKey(2))
    assert set(np.unique(y)) == {0.0, 1.0}               # classic: kept units are not scaled
    assert abs(y.mean() - 0.3) < 0.005                   # 1e5 Bernoulli(0.3): std 0.0015
    assert abs(layer.forward(x, {}).mean() - 0.3) < 1e-6  # test time: the expectation


def test_same_key_same_mask_and_key_required():
    layer = make()
    x = np.random.default_rng(0).standard_normal((4, 3, 4, 5)).astype(np.float32)
    a = layer.forward(x, {}, train=True, rng=DrawKey(9)).copy()
    b = layer.forward(x, {}, train=True, rng=DrawKey(9)).copy()
    c = layer.forward(x, {}, train=True, rng=DrawKey(10))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="needs a draw key"):
        layer.forward(x, {}, train=True)


@pytest.mark.parametrize("train", [True, False])
def test_gradient_finite_differences(train):
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(np.float32)
    gradcheck.check(make(keep=0.6), [x], train=train)


def test_keys_buffers_and_net():
    assert make().cfg["keep"] == 0.5
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(layers.LayerError) as e:
            make(keep=bad)
        assert e.value.key == "keep"
    net = engine.load("name: t\ninput: {shape: [1, 4, 4]}\nlayers:\n"
                      "  - {name: f1, type: fc, outputs: 6, neuron: relu}\n"
                      "  - {name: d, type: dropout2, keep: 0.5}\n"
                      "  - {name: f2, type: fc, outputs: 3}\n  - {name: prob, type: softmax}\n")
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    net.loss_and_grads(x, np.array([0, 1, 2]), train=True)
    layer = net.layer("d").layer
    declared = layer.buffer_shapes(3, train=True, backward=True)
    assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
    state = net.rng.bit_generator.state
    a = net.gradients(x, np.array([0, 1, 2]), train=True)[1]["f1.weight"]
    net.rng.bit_generator.state = state
    b = net.gradients(x, np.array([0, 1, 2]), train=True)[1]["f1.weight"]
    np.testing.assert_array_equal(a, b)             # the pass's key comes from the net's generator only
