"""sum2 (cuda-convnet's cost.sum2): coeff * batch mean of sum(x^2), against the NumPy reference,
central differences and PyTorch; a net ending in it trains without labels."""
import numpy as np
import pytest

import engine
import layers
from engine import gradcheck
from layers.sum2 import reference


def make(shape, **cfg):
    return layers.get("sum2")("cost", cfg, [shape])


@pytest.mark.parametrize("shape, n, coeff", [((7,), 3, 1.0), ((3, 5, 4), 2, 0.25), ((10000,), 2, 3.0)])
def test_cost_matches_reference(shape, n, coeff):
    # (10000,) x 2: more than one 16384-element chunk of partial sums
    x = np.random.default_rng(n).standard_normal((n,) + shape).astype(np.float32)
    layer = make(shape, coeff=coeff)
    assert layer.forward(x, {}) is not None
    loss, dx = layer.cost(None)
    want, want_dx = reference.cost(x, coeff)
    assert abs(loss - want) <= 1e-6 * want
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-7)
    assert layer.cost(None)[0] == loss                     # repeatable to the bit


def test_forward_is_the_identity_and_labels_are_ignored():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    layer = make((6,))
    np.testing.assert_array_equal(layer.forward(x, {}), x)
    for labels in (None, np.arange(2), "anything"):
        assert layer.check_labels(labels, n=2) is None
        assert layer.cost(labels)[0] == pytest.approx(np.sum(x.astype(np.float64) ** 2) / 2)


def test_gradient_finite_differences():
    x = np.random.default_rng(1).standard_normal((3, 2, 3, 4)).astype(np.float32)
    gradcheck.check(make((2, 3, 4), coeff=0.5), [x])


def test_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    x = np.random.default_rng(2).standard_normal((4, 9)).astype(np.float32)
    layer = make((9,), coeff=0.3)
    layer.forward(x, {})
    loss, dx = layer.cost(None)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tloss = 0.3 * torch.nn.functional.mse_loss(tx, torch.zeros_like(tx), reduction="sum") / 4
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-6 * tloss.item()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_buffers_are_the_declared_ones():
    layer = make((5,))
    x = np.ones((3, 5), np.float32)
    layer.forward(x, {})
    assert layer._buffers == {} and layer.buffer_shapes(3) == {}
    layer.cost(None)
    assert {t: b.shape for t, b in layer._buffers.items()} == \
        {t: s for t, (_, s) in layer.buffer_shapes(3, backward=True).items()} == {"dx": (3, 5)}


def test_cost_before_forward_and_bad_coeff():
    with pytest.raises(RuntimeError, match="before forward"):
        make((3,)).cost(None)
    for coeff, message in ((0, "must be > 0"), ("a", "must be a number")):
        with pytest.raises(layers.LayerError) as e:
            make((3,), coeff=coeff)
        assert e.value.key == "coeff" and message in e.value.message


NET = """\
input: {shape: [1, 4, 4]}
layers:
  - {name: c1, type: conv, filters: 2, size: 3, neuron: "tanh[1.7159,0.6667]", init_w: 0.3}
  - {name: f1, type: fc, outputs: 3, neuron: softrelu, init_w: 0.3}
  - {name: cost, type: sum2, coeff: 0.5}
"""


def test_a_net_ending_in_sum2_needs_no_labels():
    net = engine.load(NET, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 1, 4, 4)).astype(np.float32)
    out = net.forward(x)
    np.testing.assert_array_equal(out, net.forward(x, outputs=["f1"])["f1"])   # sum2 is the identity
    loss, grads = net.gradients(x, labels=None)
    assert loss == pytest.approx(0.5 * np.sum(out.astype(np.float64) ** 2) / 2, rel=1e-6)
    # central differences of the net's loss on a few weights of each layer
    state = net.state_dict()
    h = 1e-2
    for key in ("c1.weight", "c1.bias", "f1.weight"):
        for idx in [(0,) * state[key].ndim, tuple(s - 1 for s in state[key].shape)]:
            w = state[key].copy()
            w[idx] += h
            net.load_state_dict({**state, key: w})
            up = net.gradients(x, labels=None)[0]
            w[idx] -= 2 * h
            net.load_state_dict({**state, key: w})
            down = net.gradients(x, labels=None)[0]
            assert (up - down) / (2 * h) == pytest.approx(grads[key][idx], rel=2e-2, abs=1e-4)
        net.load_state_dict(state)


def test_sum2_must_be_the_output():
    text = NET + "  - {name: after, type: neuron, fn: relu}\n"
    with pytest.raises(engine.ConfigError, match="cost layer and must be the net's output"):
        engine.load(text)


def test_a_sum2_net_trains_and_validates_with_its_own_cost(tmp_path):
    from engine.train import Trainer
    net_file = tmp_path / "s2.yaml"
    net_file.write_text("name: s2\ninput: {shape: [1, 8, 8]}\nlayers:\n"
                        "  - {name: fc1, type: fc, outputs: 6, neuron: tanh}\n"
                        "  - {name: cost, type: sum2, coeff: 0.5}\n")
    lines = []
    result = Trainer(str(net_file), data="synthetic:64", epochs=3, batch=16, lr=0.05,
                     out=str(tmp_path / "run"), log=lines.append).run()
    metrics = result["metrics"]
    assert all("val_top1" not in m for m in metrics)          # no class errors for a regression cost
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # x -> 0 is learnable
    net = engine.load(None, checkpoint=str(tmp_path / "run"))
    assert not net.classifies
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    out = net.forward(x)
    assert net.loss(x, None) == pytest.approx(0.5 * np.mean(np.sum(out.reshape(5, -1) ** 2, 1)), rel=1e-5)
    assert not any("top-1" in line for line in lines) and any("val loss" in line for line in lines)
