"""cuda-convnet's own example-layers/layers-example.cfg and layer-params-example.cfg (verbatim
copies: tests/data/cuda-convnet/example-ORIGIN.md) through `convert`.

As shipped the pair stops at two things we do not have (conv32-3's randSparse, fc10's
per-input epsW and momW); with those two changed it converts — conv32-2's sharedBiases=false
becomes `shared_biases: false` — with cuda-convnet's parameter count, loads and trains a step.
"""
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import graph
from engine.config import parse_net
from engine.convert import ConvertError, convert
from engine.solver import SGD

DATA = Path(__file__).parent / "data" / "cuda-convnet"
LAYERS, PARAMS = DATA / "layers-example.cfg", DATA / "layer-params-example.cfg"
CIFAR = (3, 32, 32)        # the cifar data provider cuda-convnet ran its examples on

# Hand-computed by cuda-convnet's rules (test_convert.py's docstring) at a 3x32x32 input:
EXPECT = {
    "conv32": ((32, 32, 32), 7_808),       # 1 + ceil((2*4 + 32 - 9)/1) = 32; 3*9*9*32 + 32 = 7,776 + 32
    "fc1024": ((1024,), 3_146_752),        # reads data: 3*32*32 = 3,072 inputs; 3,072*1,024 + 1,024
    "maxpool": ((32, 15, 15), 0),          # ceil((32 - 4)/2) + 1 = 15
    "rnorm1": ((32, 15, 15), 0),
    "cnorm1": ((32, 15, 15), 0),
    "conv32-2": ((128, 15, 15), 54_400),   # groups 4 x 32 filters = 128; 1 + ceil((4 + 15 - 5)/1) = 15;
                                           #   weights 32/4 * 5*5 * 128 = 25,600; sharedBiases=false:
                                           #   one bias per filter and position, 128 * 15*15 = 28,800
    "conv32-3": ((128, 8, 8), 102_528),    # 1 + ceil((4 + 15 - 5)/2) = 8; without randSparse every
                                           #   group reads its 128/4 = 32 channels: 32*25*128 + 128
                                           #   = 102,400 + 128 (cuda-convnet's filterChannels=64: 204,928)
    "fc10": ((10,), 92_170),               # two inputs: 128*8*8 + 1,024 = 9,216; 9,216*10 + 10
    "probs": ((10,), 0),
}
TOTAL = 3_403_658     # 7,808 + 3,146,752 + 54,400 + 102,528 + 92,170


def changed(tmp_path, randsparse=True, rates=True):
    """The shipped pair with randSparse (and filterChannels) and/or fc10's per-input rates changed."""
    layers_text, params_text = LAYERS.read_text(), PARAMS.read_text()
    if randsparse:
        old = "randSparse=true\nfilterChannels=64\n"
        assert layers_text.count(old) == 1
        layers_text = layers_text.replace(old, "randSparse=false\n")
    if rates:
        for old, new in (("epsW=0.0001,0.001\n", "epsW=0.001\n"), ("momW=0.5,0.9\n", "momW=0.9\n")):
            assert params_text.count(old) == 1
            params_text = params_text.replace(old, new)
    lp, pp = tmp_path / "layers-example.cfg", tmp_path / "layer-params-example.cfg"
    lp.write_text(layers_text)
    pp.write_text(params_text)
    return str(lp), str(pp)


def line_of(path, needle, after=None):
    lines = Path(path).read_text().splitlines()
    start = 0 if after is None else lines.index(after)
    return next(i for i, line in enumerate(lines[start:], start + 1) if line.startswith(needle))


def test_shipped_pair_stops_at_randsparse_past_the_unshared_biases():
    """conv32-2 (sharedBiases=false, above conv32-3) no longer stops it."""
    with pytest.raises(ConvertError) as e:
        convert(str(LAYERS), str(PARAMS), CIFAR)
    err = e.value
    assert (err.file, err.layer, err.key) == (str(LAYERS), "conv32-3", "randSparse")
    assert err.line == line_of(LAYERS, "randSparse=true") and "randSparse" in err.message


def test_next_it_stops_at_fc10s_per_input_rates(tmp_path):
    lp, pp = changed(tmp_path, rates=False)
    with pytest.raises(ConvertError) as e:
        convert(lp, pp, CIFAR)
    err = e.value
    assert (err.file, err.layer, err.key) == (pp, "fc10", "epsW")
    assert err.line == line_of(pp, "epsW=0.0001,0.001")
    assert "differs between inputs (0.0001, 0.001)" in err.message


@pytest.fixture(scope="module")
def conversion(tmp_path_factory):
    lp, pp = changed(tmp_path_factory.mktemp("example"))
    return convert(lp, pp, CIFAR)


def test_converts_with_cuda_convnets_shapes_and_parameter_count(conversion):
    assert sum(p for _, p in EXPECT.values()) == TOTAL        # the hand sums agree with themselves
    nodes = graph.build(parse_net(conversion.text))
    got = {n.name: (tuple(n.output_shape), sum(int(np.prod(s)) for s in n.layer.param_shapes().values()))
           for n in nodes}
    assert got == EXPECT
    assert conversion.num_params == TOTAL and f"{TOTAL:,} parameters" in conversion.text


def test_mapping_of_the_unshared_biases_and_the_old_style_norms(conversion):
    layers = {d["name"]: d for d in parse_net(conversion.text).data["layers"]}
    assert layers["conv32-2"]["shared_biases"] is False and layers["conv32-2"]["groups"] == 4
    assert "shared_biases" not in layers["conv32"] and "shared_biases" not in layers["conv32-3"]
    assert layers["conv32"]["neuron"] == "logistic" and layers["conv32"]["padding"] == 4
    # cc1 before June 2012: sizeX, scale and pow in the definition file
    assert (layers["cnorm1"]["size"], layers["cnorm1"]["alpha"], layers["cnorm1"]["beta"]) == (7, 0.001, 0.5)
    assert layers["fc10"]["inputs"] == ["conv32-3", "fc1024"]
    dropped = next(n for n in conversion.notices if n.startswith("accepted and dropped"))
    assert "sharedBiases (conv32)" in dropped        # =true is our default; =false is mapped


def test_loads_and_trains_a_step(conversion):
    net = engine.load(conversion.text, seed=0)
    assert net.num_params == TOTAL
    assert net.state_dict()["conv32-2.bias"].shape == (128, 15, 15)
    s = parse_net(conversion.text).train
    x = np.random.default_rng(0).standard_normal((2,) + CIFAR).astype(np.float32)
    labels = np.array([3, 7])
    before = {k: v.copy() for k, v in net.parameters().items()}
    loss, grads = net.loss_and_grads(x, labels, train=True)
    assert np.isfinite(loss)
    assert np.abs(grads["conv32-2.bias"]).max() > 0
    SGD.for_net(net, s["momentum"], s["weight_decay"]).step({k: g.copy() for k, g in grads.items()}, s["lr"])
    after = net.parameters()
    assert all(np.isfinite(v).all() for v in after.values())
    assert not np.array_equal(before["conv32-2.bias"], after["conv32-2.bias"])
