"""`init: gaussian | kaiming | xavier`, `fan` and `nonlinearity` on conv, fc and local: the drawn
weights' std against torch.nn.init's formulas (statistically, on large layers), fans as torch
computes them, gains as torch.nn.init.calculate_gain, the gaussian default unchanged."""
import math

import numpy as np
import pytest

import engine
import layers


def build(type_name, cfg, shape):
    return layers.get(type_name)(type_name, cfg, [shape])


# (type, cfg, input shape, fan_in, fan_out) with the fans written out by hand
LAYERS = [
    ("conv", {"filters": 64, "size": 3, "padding": 1}, (32, 6, 6), 32 * 9, 64 * 9),
    ("conv", {"filters": 192, "size": 5, "groups": 4}, (16, 7, 7), 4 * 25, 192 * 25),
    ("fc", {"outputs": 300}, (200,), 200, 300),
    ("fc", {"outputs": 50}, (4, 5, 5), 100, 50),
    ("local", {"filters": 8, "size": 3, "groups": 2}, (6, 5, 5), 3 * 9, 8 * 9),
]


@pytest.mark.parametrize("type_name,cfg,shape,fan_in,fan_out", LAYERS)
def test_fans(type_name, cfg, shape, fan_in, fan_out):
    assert build(type_name, cfg, shape).weight_fans() == (fan_in, fan_out)


@pytest.mark.parametrize("type_name,cfg,shape,fan_in,fan_out", LAYERS[:4])
def test_fans_are_torchs(type_name, cfg, shape, fan_in, fan_out):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    layer = build(type_name, cfg, shape)
    w = torch.empty(layer.param_shapes()["weight"])
    assert torch.nn.init._calculate_fan_in_and_fan_out(w) == (fan_in, fan_out)


@pytest.mark.parametrize("neuron,want", [("relu", math.sqrt(2)), ("leaky", math.sqrt(2 / (1 + 0.01 ** 2))),
                                         ("leaky[0.2]", math.sqrt(2 / 1.04)), ("tanh", 5 / 3),
                                         ("selu", 0.75), ("ident", 1.0), ("linear[2,1]", 1.0),
                                         ("logistic", 1.0)])
def test_gains(neuron, want):
    layer = build("fc", {"outputs": 4, "neuron": neuron, "init": "xavier"}, (5,))
    assert layer.init_gain() == pytest.approx(want, rel=1e-6)


def test_gains_are_torchs():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    g = torch.nn.init.calculate_gain
    for neuron, args in [("relu", ("relu",)), ("leaky[0.2]", ("leaky_relu", 0.2)), ("leaky", ("leaky_relu",)),
                         ("tanh", ("tanh",)), ("selu", ("selu",)), ("ident", ("linear",)),
                         ("logistic", ("sigmoid",))]:
        layer = build("fc", {"outputs": 4, "neuron": neuron, "init": "kaiming"}, (5,))
        assert layer.init_gain() == pytest.approx(g(*args), rel=1e-6), neuron


def std_formula(init, fan, gain, fan_in, fan_out):
    if init == "kaiming":
        return gain / math.sqrt(fan_in if fan == "in" else fan_out)
    return gain * math.sqrt(2 / (fan_in + fan_out))


@pytest.mark.parametrize("type_name,cfg,shape,fan_in,fan_out", LAYERS[:3])
@pytest.mark.parametrize("init,fan,neuron,gain", [("kaiming", "in", "relu", math.sqrt(2)),
                                                  ("kaiming", "out", "relu", math.sqrt(2)),
                                                  ("kaiming", "in", "tanh", 5 / 3),
                                                  ("xavier", "in", None, 1.0),
                                                  ("xavier", "in", "leaky[0.2]", math.sqrt(2 / 1.04))])
def test_drawn_std_matches_the_formula(type_name, cfg, shape, fan_in, fan_out, init, fan, neuron, gain):
    layer = build(type_name, dict(cfg, init=init, fan=fan, neuron=neuron), shape)
    w = layer.init_params(np.random.default_rng(0))["weight"].astype(np.float64)
    assert w.size >= 15_000       # the std's estimate within 1.8% (3 sigma) at this size
    want = std_formula(init, fan, gain, fan_in, fan_out)
    assert abs(w.mean()) < 0.03 * want
    assert w.std() == pytest.approx(want, rel=0.03)


def test_nonlinearity_names_the_activation_of_a_later_layer():
    # ResNet: conv (no neuron) -> batch norm -> relu; torchvision's kaiming_normal_(fan_out, relu)
    layer = build("conv", {"filters": 64, "size": 3, "init": "kaiming", "fan": "out",
                           "nonlinearity": "relu"}, (32, 8, 8))
    w = layer.init_params(np.random.default_rng(1))["weight"]
    assert w.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert layer.init_gain() == pytest.approx(math.sqrt(2))


def test_gaussian_is_the_default_and_unchanged():
    rng_draw = np.random.default_rng(5).standard_normal((20, 7)) * 0.05
    for cfg in ({"outputs": 20, "init_w": 0.05}, {"outputs": 20, "init_w": 0.05, "init": "gaussian"}):
        layer = build("fc", cfg, (7,))
        p = layer.init_params(np.random.default_rng(5))
        np.testing.assert_array_equal(p["weight"], rng_draw.astype(np.float32))
        np.testing.assert_array_equal(p["bias"], np.zeros(20, np.float32))


def test_bias_keeps_init_b():
    layer = build("conv", {"filters": 4, "size": 3, "init": "kaiming", "init_b": 0.5}, (3, 5, 5))
    np.testing.assert_array_equal(layer.init_params(np.random.default_rng(0))["bias"], np.full(4, 0.5))


@pytest.mark.parametrize("cfg,key,message", [
    ({"init": "he"}, "init", "gaussian|kaiming|xavier"),
    ({"init": "kaiming", "fan": "both"}, "fan", "in|out"),
    ({"init": "kaiming", "neuron": "softrelu"}, "neuron", "neuron softrelu has no gain"),
    ({"init": "xavier", "nonlinearity": "sqrt"}, "nonlinearity", "set `nonlinearity:`"),
    ({"init": "kaiming", "nonlinearity": "rleu"}, "nonlinearity", "did you mean 'relu'"),
])
def test_bad_keys_say_why(cfg, key, message):
    with pytest.raises(layers.LayerError) as e:
        build("fc", dict(cfg, outputs=3), (4,))
    assert e.value.key == key and message in e.value.message


def test_softrelu_is_fine_with_gaussian_or_a_named_nonlinearity():
    build("fc", {"outputs": 3, "neuron": "softrelu"}, (4,))
    build("fc", {"outputs": 3, "neuron": "softrelu", "init": "kaiming", "nonlinearity": "relu"}, (4,))


NET = """
input: {shape: [3, 8, 8]}
layers:
  - name: c1
    type: conv
    filters: 16
    size: 3
    init: %s
    neuron: relu
  - {name: f1, type: fc, outputs: 10, init: xavier}
  - {name: prob, type: softmax}
"""


def test_in_a_net_file():
    net = engine.load(NET % "kaiming")
    w = net.state_dict()["c1.weight"]
    assert w.shape == (16, 3, 3, 3) and 0.2 < w.std() < 0.35      # sqrt(2/27) = 0.27
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET % "kaiming_normal")
    assert (e.value.layer, e.value.key) == ("c1", "init")


def test_torch_mirror_draws_with_the_same_std():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the mirror needs it")
    from bench.torch_mirror import Mirror, describe
    net = engine.load(NET % "kaiming")
    w = dict(Mirror(describe(net.layers), seed=0).named_parameters())     # drawn, not copied
    conv = next(v for k, v in w.items() if k.endswith("weight") and v.dim() == 4).detach().numpy()
    assert conv.std() == pytest.approx(math.sqrt(2 / 27), rel=0.15)      # 432 draws
    fc = next(v for k, v in w.items() if k.endswith("weight") and v.dim() == 2).detach().numpy()
    assert fc.std() == pytest.approx(math.sqrt(2 / (16 * 36 + 10)), rel=0.05)   # 5,760 draws
