"""concat: the engine's join along channels or flat is the layer; it equals the NumPy
reference and torch.cat, hands each input its part of the gradient, and checks shapes."""
import numpy as np
import pytest

import engine
import layers
from engine import gradcheck
from layers.base import join_inputs, split_grad
from layers.concat import reference


def make(shapes, **cfg):
    return layers.get("concat")("cat", cfg, shapes)


CASES = [("channels", [(2, 3, 4), (1, 3, 4), (3, 3, 4)]),
         ("flat", [(2, 3, 4), (5,), (1, 2, 2)]),
         ("channels", [(4,), (3,)]),            # [N, D] inputs: along axis 1 as well
         ("channels", [(2, 3, 5)])]             # one input: the identity


@pytest.mark.parametrize("mode,shapes", CASES)
def test_forward_backward_match_reference(mode, shapes):
    rng = np.random.default_rng(len(shapes))
    layer = make(shapes, mode=mode)
    xs = [rng.standard_normal((2,) + s).astype(np.float32) for s in shapes]
    y = layer.forward(join_inputs(layer, xs), {})
    want = reference.forward(xs, mode)
    assert layer.output_shape == want.shape[1:]
    np.testing.assert_array_equal(y, want)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, {})
    assert grads == {} and layer.buffer_shapes(2, backward=True) == {}
    for got, expected in zip(split_grad(layer, dx, layer.input_shapes), reference.backward(dy, shapes, mode)):
        np.testing.assert_array_equal(got, expected)
    gradcheck.check(layer, xs)


def test_channels_need_matching_height_and_width():
    assert make([(2, 3, 4), (5, 3, 4)]).output_shape == (7, 3, 4)
    assert make([(2, 3, 4), (5, 4, 3)], mode="flat").output_shape == (24 + 60,)
    with pytest.raises(layers.LayerError) as e:
        make([(2, 3, 4), (5, 4, 3)])
    assert e.value.key == "inputs"
    with pytest.raises(layers.LayerError) as e:
        make([(2, 3, 4)], mode="stack")
    assert e.value.key == "mode"


HEAD = """
name: cat
input: {shape: [2, 6, 6]}
layers:
  - {name: a, type: conv, filters: 3, size: 3, padding: 1, neuron: relu, inputs: [data]}
  - {name: b, type: pool, mode: max, size: SIZE, stride: 1, neuron: abs, inputs: [data], gpu: 1}
"""
WITH_CONCAT = HEAD + """\
  - {name: cat, type: concat, inputs: [a, b]}
  - {name: f, type: fc, outputs: 3}
  - {name: prob, type: softmax}
"""
DIRECT = HEAD + """\
  - {name: f, type: fc, outputs: 3, inputs: [a, b]}
  - {name: prob, type: softmax}
"""


def test_in_a_net_equals_reading_both_inputs_directly():
    """concat -> fc equals fc reading the two layers itself (the engine joins flat for fc)."""
    with pytest.raises(engine.ConfigError) as e:        # a 3x6x6 and a 2x5x5 output
        engine.load(WITH_CONCAT.replace("SIZE", "2"))
    assert (e.value.layer, e.value.key) == ("cat", "inputs")
    net = engine.load(WITH_CONCAT.replace("SIZE", "1"))
    direct = engine.load(DIRECT.replace("SIZE", "1"))
    direct.load_state_dict(net.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    labels = np.array([0, 2, 1])
    np.testing.assert_allclose(net.forward(x), direct.forward(x), rtol=1e-6)
    loss, grads = net.gradients(x, labels)
    loss2, grads2 = direct.gradients(x, labels)
    assert loss == pytest.approx(loss2, rel=1e-6)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads2[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode,shapes", CASES[:2])
def test_matches_torch_cat(mode, shapes):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    rng = np.random.default_rng(5)
    layer = make(shapes, mode=mode)
    xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in shapes]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = torch.cat([t.flatten(1) if mode == "flat" else t for t in ts], dim=1)
    y = layer.forward(join_inputs(layer, xs), {})
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    dx, _ = layer.backward(dy, {})
    for got, t in zip(split_grad(layer, dx, layer.input_shapes), ts):
        np.testing.assert_array_equal(got, t.grad.numpy())


NEW_LAYERS = """
name: new-layers
input: {shape: [2, 4, 4]}
layers:
  - {name: la, type: local, inputs: [data], filters: 2, size: 3, neuron: abs}
  - {name: ca, type: conv, inputs: [data], filters: 2, size: 3, neuron: relu, gpu: 1}
  - {name: na, type: cnorm, inputs: [la], size: 2, alpha: 0.5}
  - {name: s, type: eltsum, inputs: [na, ca], coeffs: [1.0, -0.5]}
  - {name: m, type: eltmax, inputs: [ca, na], gpu: 1}
  - {name: j, type: concat, inputs: [s, m], gpu: 1}
  - {name: f, type: fc, outputs: 6, neuron: relu, gpu: 1}
  - {name: d, type: dropout2, keep: 0.5, gpu: 1}
  - {name: o, type: fc, inputs: [d, s], outputs: 3}
  - {name: prob, type: softmax}
"""


@pytest.mark.parametrize("train", [False, True])
def test_declared_buffers_of_a_net_of_the_new_layers(train):
    """Each layer's buffer_shapes lists exactly what it allocates (engine.memory adds them up)."""
    net = engine.load(NEW_LAYERS)
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    if train:
        net.loss_and_grads(x, np.array([0, 1, 2]), train=True)
    else:
        net.forward(x)
    for node in net.layers:
        need_dx = any(i != "data" for i in node.inputs)
        declared = node.layer.buffer_shapes(3, train, train, need_dx)
        assert {k: b.shape for k, b in node.layer._buffers.items()} == \
            {k: tuple(s) for k, (_, s) in declared.items()}, node.name

