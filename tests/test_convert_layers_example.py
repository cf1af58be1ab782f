"""cuda-convnet's own example-layers/layers-example.cfg and layer-params-example.cfg (verbatim
copies: tests/data/cuda-convnet/example-ORIGIN.md) through `convert`, as shipped: conv32-2's
sharedBiases=false becomes `shared_biases: false`, conv32-3's randSparse with filterChannels=64
becomes `channel_sets` drawn by cuda-convnet's rule, fc10's per-input epsW and momW become
`lr_w` and `mom_w` lists; cuda-convnet's parameter count; it loads and trains a step.
"""
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import graph
from engine.config import parse_net
from engine.convert import ConvertError, convert
from engine.settings import make_optimizer, resolve

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
    "conv32-3": ((128, 8, 8), 204_928),    # 1 + ceil((4 + 15 - 5)/2) = 8; randSparse: every group reads
                                           #   filterChannels=64 channels: 64*25*128 + 128 = 204,800 + 128
    "fc10": ((10,), 92_170),               # two inputs: 128*8*8 + 1,024 = 9,216; 9,216*10 + 10
    "probs": ((10,), 0),
}
TOTAL = 3_506_058     # 7,808 + 3,146,752 + 54,400 + 204,928 + 92,170


def line_of(path, needle):
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if line.startswith(needle))


@pytest.fixture(scope="module")
def conversion():
    return convert(str(LAYERS), str(PARAMS), CIFAR)


@pytest.fixture(scope="module")
def layers_of(conversion):
    return {d["name"]: d for d in parse_net(conversion.text).data["layers"]}


def test_converts_with_cuda_convnets_shapes_and_parameter_count(conversion):
    assert sum(p for _, p in EXPECT.values()) == TOTAL        # the hand sums agree with themselves
    nodes = graph.build(parse_net(conversion.text))
    got = {n.name: (tuple(n.output_shape), sum(int(np.prod(s)) for s in n.layer.param_shapes().values()))
           for n in nodes}
    assert got == EXPECT
    assert conversion.num_params == TOTAL and f"{TOTAL:,} parameters" in conversion.text


def test_randsparse_channel_sets_are_cuda_convnets_draw(conversion, layers_of):
    """cuda-convnet's gen_rand_conns: groups*filterChannels/channels = 4*64/128 = 2 permutations
    of the 128 channels, concatenated, group g taking the g-th run of 64 (here numpy's
    RandomState(0), as the converter documents)."""
    sets = layers_of["conv32-3"]["channel_sets"]
    rng = np.random.RandomState(0)
    conns = np.concatenate([rng.permutation(128), rng.permutation(128)])
    assert sets == [conns[g * 64:(g + 1) * 64].tolist() for g in range(4)]
    for pair in (sets[0] + sets[1], sets[2] + sets[3]):      # each permutation covers every channel once
        assert sorted(pair) == list(range(128))
    assert layers_of["conv32-3"]["groups"] == 4 and layers_of["conv32-3"]["filters"] == 128
    assert any("randSparse" in n and "RandomState(0)" in n for n in conversion.notices)
    # the YAML holds the sets: converting again gives the same text
    assert convert(str(LAYERS), str(PARAMS), CIFAR).text == conversion.text


def test_per_input_rates_and_momenta(conversion, layers_of):
    """fc10: epsW=0.0001,0.001 and momW=0.5,0.9 against lr 0.001 (the most common epsW) and
    momentum 0.9 (the most common momW): lr_w [0.1, 1], mom_w [0.5, 0.9]; epsB 0.002: lr_b 2."""
    fc10 = layers_of["fc10"]
    assert fc10["lr_w"] == [pytest.approx(0.1), 1] and fc10["mom_w"] == [0.5, 0.9] and fc10["lr_b"] == 2
    assert fc10["inputs"] == ["conv32-3", "fc1024"]
    assert all("mom_w" not in d for name, d in layers_of.items() if name != "fc10")
    assert layers_of["fc1024"]["lr_w"] == pytest.approx(0.01)        # 0.00001 / 0.001
    train = parse_net(conversion.text).train
    assert (train["lr"], train["momentum"], train["weight_decay"]) == (0.001, 0.9, 0)


def test_mapping_of_the_unshared_biases_and_the_old_style_norms(conversion, layers_of):
    assert layers_of["conv32-2"]["shared_biases"] is False and layers_of["conv32-2"]["groups"] == 4
    assert "shared_biases" not in layers_of["conv32"] and "shared_biases" not in layers_of["conv32-3"]
    assert layers_of["conv32"]["neuron"] == "logistic" and layers_of["conv32"]["padding"] == 4
    # cc1 before June 2012: sizeX, scale and pow in the definition file
    cnorm = layers_of["cnorm1"]
    assert (cnorm["size"], cnorm["alpha"], cnorm["beta"]) == (7, 0.001, 0.5)
    dropped = next(n for n in conversion.notices if n.startswith("accepted and dropped"))
    assert "sharedBiases (conv32)" in dropped        # =true is our default; =false is mapped
    assert "randSparse" not in dropped and "filterChannels" not in dropped


def test_loads_and_trains_a_step_with_the_per_input_rates(conversion):
    net = engine.load(conversion.text, seed=0)
    assert net.num_params == TOTAL
    state = net.state_dict()
    assert state["conv32-2.bias"].shape == (128, 15, 15) and state["conv32-3.weight"].shape == (128, 64, 5, 5)
    opt = make_optimizer(resolve(parse_net(conversion.text).train), net)
    x = np.random.default_rng(0).standard_normal((2,) + CIFAR).astype(np.float32)
    labels = np.array([3, 7])
    w0 = net.parameters()["fc10.weight"].astype(np.float64)
    loss, grads = net.loss_and_grads(x, labels, train=True)
    assert np.isfinite(loss) and np.abs(grads["conv32-3.weight"]).max() > 0
    g = grads["fc10.weight"].astype(np.float64)
    for _ in range(2):                         # the same gradients twice: the momentum shows
        opt.step({k: v.copy() for k, v in grads.items()}, 0.001)
    # v1 = -a g; v2 = m v1 - a g: w2 = w0 - a g (2 + m), with (a, m) per input (wc=0)
    split = 128 * 8 * 8
    want = w0.copy()
    want[:, :split] -= 0.001 * 0.1 * g[:, :split] * (2 + 0.5)
    want[:, split:] -= 0.001 * 1.0 * g[:, split:] * (2 + 0.9)
    np.testing.assert_allclose(net.parameters()["fc10.weight"], want, rtol=1e-5, atol=1e-9)
    assert all(np.isfinite(v).all() for v in net.parameters().values())


def test_randsparse_false_reads_consecutive_channels(tmp_path):
    """randSparse=false: filterChannels is not read (cuda-convnet reads it only with randSparse);
    each group reads its 128/4 = 32 channels: 32*25*128 + 128 = 102,528."""
    lp = tmp_path / "layers.cfg"
    lp.write_text(LAYERS.read_text().replace("randSparse=true\n", "randSparse=false\n"))
    result = convert(str(lp), str(PARAMS), CIFAR)
    conv = {d["name"]: d for d in parse_net(result.text).data["layers"]}["conv32-3"]
    assert "channel_sets" not in conv
    assert result.num_params == TOTAL - 204_928 + 102_528
    assert "filterChannels (conv32-3)" in next(n for n in result.notices if n.startswith("accepted and dropped"))


@pytest.mark.parametrize("old, new, key", [
    ("filterChannels=64\n", "filterChannels=48\n", "filterChannels"),     # does not divide 128
    ("filterChannels=64\n", "filterChannels=30\n", "filterChannels"),     # not divisible by 4
    ("groups=4\nchannels=128\n", "groups=1\nchannels=128\n", "randSparse"),
])
def test_randsparse_rules_name_the_line(tmp_path, old, new, key):
    text = LAYERS.read_text()
    assert text.count(old) == 1
    lp = tmp_path / "layers.cfg"
    lp.write_text(text.replace(old, new))
    with pytest.raises(ConvertError) as e:
        convert(str(lp), str(PARAMS), CIFAR)
    assert (e.value.layer, e.value.key) == ("conv32-3", key)
    assert e.value.line == line_of(lp, "randSparse=true" if key == "randSparse" else new.strip())
