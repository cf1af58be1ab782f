"""Per-input learning rates and momenta (cuda-convnet's per-input epsW / momW): `lr_w` and
`mom_w` as lists, one per input of an fc (or groupless conv); `mom_w` as a number. Updates
against hand-computed ones; equal lists give the scalar path's numbers bit for bit; errors
name the line and key."""
import numpy as np
import pytest

import engine
from engine.solver import SGD, Adam, PerInput, multipliers_of

NET = ("name: t\ninput: {shape: [2, 3, 3]}\nlayers:\n"
       "  - {name: a, type: fc, outputs: 4, neuron: tanh}\n"
       "  - {name: b, type: conv, inputs: [data], filters: 3, size: 3, padding: 1, neuron: relu}\n"
       "  - name: f\n    type: fc\n    inputs: [b, a]\n    outputs: 5\n"
       "    lr_w: [0.5, 2]\n    mom_w: [0.3, 0.8]\n"
       "  - {name: prob, type: softmax}\n")
SPLIT = 3 * 3 * 3          # f's first input, b: 27 features; then a: 4


def grads_of(net, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    return net.gradients(x, np.array([0, 4, 2]), train=True)[1]


def test_multipliers():
    net = engine.load(NET, seed=0)
    mult = multipliers_of(net)
    assert mult["f.weight"] == PerInput([27, 4], [0.5, 2.0], 1.0, [0.3, 0.8])
    assert mult["f.bias"] == (1.0, 0.0) and mult["a.weight"] == (1.0, 1.0)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_two_steps_by_hand(wd):
    net = engine.load(NET, seed=0)
    g = {k: v.copy() for k, v in grads_of(net).items()}
    w0 = net.parameters()["f.weight"].astype(np.float64)
    sgd = SGD.for_net(net, momentum=0.9, weight_decay=wd)
    lr = 0.1
    want, v = w0.copy(), np.zeros_like(w0)
    gf = g["f.weight"].astype(np.float64)
    for _ in range(2):
        sgd.step({k: x.copy() for k, x in g.items()}, lr)
        for cols, mult, mom in ((slice(0, SPLIT), 0.5, 0.3), (slice(SPLIT, None), 2.0, 0.8)):
            # cuda-convnet's rule: v = m v - wd lr w - lr g; w += v
            v[:, cols] = mom * v[:, cols] - wd * lr * mult * want[:, cols] - lr * mult * gf[:, cols]
            want[:, cols] += v[:, cols]
    np.testing.assert_allclose(net.parameters()["f.weight"], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sgd.velocity["f.weight"], v, rtol=1e-5, atol=1e-7)


def test_scalar_mom_w_by_hand():
    net = engine.load(NET.replace("    lr_w: [0.5, 2]\n    mom_w: [0.3, 0.8]\n", "    mom_w: 0.25\n"), seed=0)
    assert multipliers_of(net)["f.weight"] == (1.0, 1.0, 0.25)
    g = grads_of(net)
    w0 = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    sgd = SGD.for_net(net, momentum=0.9, weight_decay=0.0)
    for _ in range(2):
        sgd.step({k: x.copy() for k, x in g.items()}, 0.1)
    # two steps of the same g from rest: w2 = w0 - lr g (2 + m); f's m is its own, the others' 0.9
    for key, m in (("f.weight", 0.25), ("a.weight", 0.9), ("f.bias", 0.9)):
        want = w0[key] - 0.1 * g[key] * (2 + m)
        np.testing.assert_allclose(net.parameters()[key], want, rtol=1e-5, atol=1e-7)


def test_equal_lists_are_the_scalar_path_bit_for_bit():
    listed = engine.load(NET.replace("lr_w: [0.5, 2]\n    mom_w: [0.3, 0.8]", "lr_w: [0.5, 0.5]"), seed=0)
    plain = engine.load(NET.replace("lr_w: [0.5, 2]\n    mom_w: [0.3, 0.8]", "lr_w: 0.5"), seed=0)
    assert isinstance(multipliers_of(listed)["f.weight"], PerInput)
    assert multipliers_of(plain)["f.weight"] == (0.5, 1.0)
    g = grads_of(plain)
    opts = [SGD.for_net(n, momentum=0.9, weight_decay=0.0005) for n in (listed, plain)]
    for _ in range(3):
        for opt in opts:
            opt.step({k: x.copy() for k, x in g.items()}, 0.05)
    for k, v in plain.parameters().items():
        np.testing.assert_array_equal(listed.parameters()[k], v)


def test_a_zero_rate_freezes_that_input_only_and_adam_takes_the_rates():
    net = engine.load(NET.replace("lr_w: [0.5, 2]", "lr_w: [0, 2]"), seed=0)
    before = net.parameters()["f.weight"].copy()
    opt = Adam.for_net(net)
    opt.step({k: x.copy() for k, x in grads_of(net).items()}, 0.01)
    after = net.parameters()["f.weight"]
    np.testing.assert_array_equal(after[:, :SPLIT], before[:, :SPLIT])
    # Adam's first step moves each weight by lr_eff (g / |g| up to eps): 0.02 for a's columns
    np.testing.assert_allclose(np.abs(after[:, SPLIT:] - before[:, SPLIT:]), 0.02, rtol=1e-3)


@pytest.mark.parametrize("old, new, key, line, words", [
    ("lr_w: [0.5, 2]", "lr_w: [0.5, 2, 1]", "lr_w", 10, "one value per input (2: b, a), got 3"),
    ("mom_w: [0.3, 0.8]", "mom_w: [0.3, 1.5]", "mom_w", 11, "<= 0.999999"),
    ("lr_w: [0.5, 2]", "lr_w: []", "lr_w", 10, "an empty list"),
    ("lr_w: [0.5, 2]", "lr_w: [0.5, x]", "lr_w", 10, "must be a number"),
])
def test_net_file_errors(old, new, key, line, words):
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET.replace(old, new))
    assert (e.value.layer, e.value.key, e.value.line) == ("f", key, line) and words in str(e.value)


def test_a_list_on_a_weight_without_per_input_columns():
    text = NET.replace("  - {name: b, type: conv, inputs: [data], filters: 3, size: 3, padding: 1, neuron: relu}\n",
                       "  - {name: b, type: conv, inputs: [data], filters: 4, size: 3, padding: 1, groups: 2, "
                       "lr_w: [1], neuron: relu}\n")
    net = engine.load(text, seed=0)
    with pytest.raises(engine.ConfigError) as e:
        SGD.for_net(net)
    assert (e.value.layer, e.value.key, e.value.line) == ("b", "lr_w", 5)
    assert "[4, 1, 3, 3]" in str(e.value)
