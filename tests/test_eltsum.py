"""eltsum: kernels = NumPy reference = PyTorch, finite differences, the `coeffs` and `neuron`
keys, and a net whose eltsum reads its inputs separately (join "separate") through the whole
engine."""
import numpy as np
import pytest
from helpers import check_net_gradients, sums_off_kinks

import engine
import layers
from engine import gradcheck
from layers.eltsum import reference


def make(shapes, **cfg):
    return layers.get("eltsum")("sum", cfg, shapes)


CASES = [(None, [(2, 3, 4)] * 2), ([0.5, -2.0, 1.0], [(3, 5)] * 3), ([1.0, 1.0], [(7,)] * 2),
         ([3.0, 0.0], [(1, 2, 2)] * 2)]
# relu and the identity run fused loops of their own, the rest the identity's plus the neuron
# pass (layers.neuron.cpu.SplitKernel); abs keeps the sum for its gradient; a large map (past
# threads.SMALL_BYTES) takes the parallel kernels
NEURONS = [("relu", [1.0, 1.0], [(3, 4, 5)] * 2), ("relu", [0.5, -2.0, 1.0], [(3, 5)] * 3),
           ("tanh[1.7,0.5]", None, [(2, 3, 4)] * 2), ("abs", [2.0, 1.0, -1.0], [(6,)] * 3),
           ("linear[2,0.5]", [1.0, -1.0], [(4, 4)] * 2), ("relu", None, [(64, 56, 56)] * 2)]


def _check(layer, xs, c, neuron, grad_check=True):
    rng = np.random.default_rng(9)
    y = layer.forward(xs, {})
    np.testing.assert_allclose(y, reference.forward(xs, c, neuron), rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dxs, grads = layer.backward(dy, {})
    assert grads == {} and len(dxs) == len(xs)
    for got, want in zip(dxs, reference.backward(dy, c, xs, neuron)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    declared = layer.buffer_shapes(xs[0].shape[0], backward=True)
    assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
    if grad_check:
        gradcheck.check(layer, xs)


@pytest.mark.parametrize("coeffs,shapes", CASES)
def test_forward_backward_match_reference_and_finite_differences(coeffs, shapes):
    rng = np.random.default_rng(len(shapes))
    layer = make(shapes, **({} if coeffs is None else {"coeffs": coeffs}))
    c = coeffs or [1.0] * len(shapes)
    assert layer.coefficients == tuple(c) and layer.output_shape == shapes[0]
    assert layer.macs() == len(shapes) * int(np.prod(shapes[0]))
    xs = [rng.standard_normal((2,) + s).astype(np.float32) for s in shapes]
    _check(layer, xs, c, None)


@pytest.mark.parametrize("neuron,coeffs,shapes", NEURONS)
def test_fused_neuron_matches_reference_and_finite_differences(neuron, coeffs, shapes):
    rng = np.random.default_rng(len(shapes))
    layer = make(shapes, neuron=neuron, **({} if coeffs is None else {"coeffs": coeffs}))
    c = coeffs or [1.0] * len(shapes)
    xs = [rng.standard_normal((2,) + s).astype(np.float32) for s in shapes]
    sums_off_kinks(xs, c)
    big = np.prod(shapes[0]) > 10000
    _check(layer, xs, c, neuron, grad_check=not big)   # finite differences on the small maps
    if neuron == "relu":            # the gradient is exactly 0 where the sum is negative
        dxs, _ = layer.backward(np.ones((2,) + shapes[0], np.float32), {})
        negative = reference.forward(xs, c) < 0
        assert negative.any() and not dxs[0][negative].any()


@pytest.mark.parametrize("shapes,cfg,key,text", [
    ([(2, 3)], {}, "inputs", "at least 2 inputs, got 1"),
    ([(2, 3), (3, 2)], {}, "inputs", "the same shape: [2, 3] vs [3, 2]"),
    ([(4,), (4,)], {"coeffs": [1.0]}, "coeffs", "a list of 2 numbers"),
    ([(4,), (4,)], {"coeffs": 2.0}, "coeffs", "a list of 2 numbers"),
    ([(4,), (4,)], {"coeffs": [1.0, "x"]}, "coeffs", "finite float32 numbers"),
    ([(4,), (4,)], {"coeffs": [True, 1]}, "coeffs", "finite float32 numbers"),
    ([(4,), (4,)], {"coeffs": [1e39, 1]}, "coeffs", "finite float32 numbers"),
])
def test_bad_inputs_and_coeffs(shapes, cfg, key, text):
    with pytest.raises(layers.LayerError) as e:
        make(shapes, **cfg)
    assert e.value.key == key and text in e.value.message


RESIDUAL = """
name: residual
input: {shape: [2, 5, 5]}
defaults: {init_w: 0.3}
layers:
  - {name: c1, type: conv, filters: 3, size: 3, padding: 1, neuron: tanh}
  - {name: c2, type: conv, filters: 3, size: 3, padding: 1, neuron: tanh, gpu: 1}
  - {name: c3, type: conv, filters: 3, size: 1, inputs: [c1]}
  - {name: sum, type: eltsum, inputs: [c1, c2, c3], coeffs: COEFFS}
  - {name: f, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""


def test_net_gradients_through_separate_inputs_match_finite_differences():
    """c1 feeds sum twice (directly and through c3): its gradient is the sum of both paths."""
    net = engine.load(RESIDUAL.replace("COEFFS", "[1.0, -0.5, 2.0]"))
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    check_net_gradients(net, x, np.array([1, 3]), ("c1.weight", "c2.weight", "c3.bias"),
                        h=1e-2, samples=5, rel=2e-2, abs=2e-4)


def test_coeffs_in_a_net_file_errors_name_the_key():
    with pytest.raises(engine.ConfigError) as e:
        engine.load(RESIDUAL.replace("COEFFS", "[1.0, 2.0]"))
    assert (e.value.layer, e.value.key) == ("sum", "coeffs")
    with pytest.raises(engine.ConfigError) as e:
        engine.load(RESIDUAL.replace("inputs: [c1, c2, c3], coeffs: COEFFS", "inputs: [c1, c2, c3, data]"))
    assert (e.value.layer, e.value.key) == ("sum", "inputs")
    assert "same shape: [3, 5, 5] vs [3, 5, 5] vs [3, 5, 5] vs [2, 5, 5]" in str(e.value)


@pytest.mark.parametrize("neuron", [None, "relu"])
def test_matches_pytorch(neuron):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    rng = np.random.default_rng(2)
    coeffs = [0.25, -1.5, 1.0]
    layer = make([(3, 4, 4)] * 3, coeffs=coeffs, neuron=neuron)
    xs = [rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for _ in coeffs]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = sum(c * t for c, t in zip(coeffs, ts))
    if neuron == "relu":                     # a ResNet block's closing ReLU, fused
        yt = torch.relu(yt)
    y = layer.forward(xs, {})
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    for got, t in zip(layer.backward(dy, {})[0], ts):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-6)
