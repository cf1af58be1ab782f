"""`python -m engine convert`: cuda-convnet layer files become YAML nets with the same layers,
wiring, output shapes, parameter counts and learning parameters.

The .cfg files under tests/data/cuda-convnet are written from the facts in the research
notes (the example nets of cuda-convnet, cuda-convnet2 and the 2012 AlexNet code). Every
expected shape and parameter count below is worked out by hand from cuda-convnet's rules:

    conv/local output side  1 + ceil((2*padding + in - filterSize) / stride)
    pool output side        ceil((in - sizeX) / stride) + 1
    conv weights            channels/groups * filterSize^2 * filters, + filters biases
    local weights           (output positions) * the same, + positions * filters biases
    fc weights              inputs * outputs, + outputs biases (several inputs: their sizes summed)
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import graph, settings
from engine.config import parse_net
from engine.convert import ConvertError, convert, parse_neuron, parse_schedule
from engine.convert import Schedule as CCSchedule
from engine.solver import SGD, Schedule
from layers.conv import reference as conv_ref

DATA = Path(__file__).parent / "data" / "cuda-convnet"
ROOT = Path(__file__).parent.parent

# ---- hand-computed shapes and parameter counts --------------------------------------------
# name: (output shape [C, H, W] or [D], parameters)
CIFAR_TRUNK = {
    "conv1": ((32, 32, 32), 2_432),     # side 1 + ceil((4 + 32 - 5)/1) = 32; 3*5*5*32 + 32
    "pool1": ((32, 16, 16), 0),         # ceil((32 - 3)/2) + 1 = 15 + 1
    "conv2": ((32, 16, 16), 25_632),    # 32*5*5*32 + 32 = 25,600 + 32
    "pool2": ((32, 8, 8), 0),           # ceil((16 - 3)/2) + 1 = 7 + 1
    "conv3": ((64, 8, 8), 51_264),      # 32*5*5*64 + 64 = 51,200 + 64
    "pool3": ((64, 4, 4), 0),           # ceil((8 - 3)/2) + 1 = 3 + 1; 4*4*64 = 1,024 values
}
EXPECT_80SEC = dict(CIFAR_TRUNK, **{
    "fc64": ((64,), 65_600),            # 1,024*64 + 64
    "fc10": ((10,), 650),               # 64*10 + 10
    "probs": ((10,), 0),
})                                      # 2,432 + 25,632 + 51,264 + 65,600 + 650 = 145,578
EXPECT_18PCT = dict(CIFAR_TRUNK, **{
    "rnorm1": ((32, 16, 16), 0),
    "rnorm2": ((32, 8, 8), 0),
    "fc10": ((10,), 10_250),            # 1,024*10 + 10
    "probs": ((10,), 0),
})                                      # 2,432 + 25,632 + 51,264 + 10,250 = 89,578
EXPECT_11PCT = {                        # 24x24 crops
    "conv1": ((64, 24, 24), 4_864),     # 1 + ceil((4 + 24 - 5)/1) = 24; 3*25*64 + 64 = 4,800 + 64
    "pool1": ((64, 12, 12), 0),         # ceil(21/2) + 1 = 12
    "rnorm1": ((64, 12, 12), 0),
    "conv2": ((64, 12, 12), 102_464),   # 64*25*64 + 64 = 102,400 + 64
    "rnorm2": ((64, 12, 12), 0),
    "pool2": ((64, 6, 6), 0),           # ceil(9/2) + 1 = 6
    "local3": ((64, 6, 6), 1_329_408),  # 1 + ceil((2 + 6 - 3)/1) = 6: 36 positions * 64*3*3*64
                                        #   = 36 * 36,864 = 1,327,104, + 36*64 = 2,304 biases
    "local4": ((32, 6, 6), 664_704),    # 36 * 64*9*32 = 663,552, + 36*32 = 1,152
    "fc10": ((10,), 11_530),            # 6*6*32 = 1,152 inputs: 1,152*10 + 10
    "probs": ((10,), 0),
}                                       # 4,864 + 102,464 + 1,329,408 + 664,704 + 11,530 = 2,112,970
EXPECT_2GPU = {"probs": ((1000,), 0),
               "fc1000": ((1000,), 4_097_000)}    # (2,048 + 2,048)*1,000 + 1,000
for col in "ab":
    EXPECT_2GPU.update({
        f"conv1{col}": ((48, 55, 55), 17_472),    # 1 + ceil((0 + 224 - 11)/4) = 1 + ceil(53.25) = 55;
                                                  #   3*11*11*48 + 48 = 17,424 + 48
        f"rnorm1{col}": ((48, 55, 55), 0),
        f"pool1{col}": ((48, 27, 27), 0),         # ceil((55 - 3)/2) + 1 = 27
        f"conv2{col}": ((128, 27, 27), 153_728),  # 48*25*128 + 128 = 153,600 + 128
        f"rnorm2{col}": ((128, 27, 27), 0),
        f"cnorm2{col}": ((128, 27, 27), 0),
        f"pool2{col}": ((128, 13, 13), 0),        # ceil(24/2) + 1 = 13
        f"conv3{col}": ((192, 13, 13), 442_560),  # two inputs: (128 + 128)*3*3*192 + 192 = 442,368 + 192
        f"conv4{col}": ((192, 13, 13), 331_968),  # 192*9*192 + 192 = 331,776 + 192
        f"conv5{col}": ((128, 13, 13), 221_312),  # 192*9*128 + 128 = 221,184 + 128
        f"pool3{col}": ((128, 6, 6), 0),          # ceil(10/2) + 1 = 6: 4,608 values
        f"fc2048{col}": ((2048,), 18_876_416),    # (4,608 + 4,608)*2,048 + 2,048
        f"dropout1{col}": ((2048,), 0),
        f"fc2048b{col}": ((2048,), 8_390_656),    # (2,048 + 2,048)*2,048 + 2,048
        f"dropout2{col}": ((2048,), 0),
    })
# a column: 17,472 + 153,728 + 442,560 + 331,968 + 221,312 + 18,876,416 + 8,390,656 = 28,434,112
# two columns + fc1000: 2*28,434,112 + 4,097,000 = 60,965,224 (nets/alexnet.yaml's count)
EXPECT_1GPU = {
    "conv1": ((64, 55, 55), 23_296),      # 3*121*64 + 64 = 23,232 + 64
    "rnorm1": ((64, 55, 55), 0),
    "pool1": ((64, 27, 27), 0),
    "conv2": ((192, 27, 27), 307_392),    # 64*25*192 + 192 = 307,200 + 192
    "rnorm2": ((192, 27, 27), 0),
    "pool2": ((192, 13, 13), 0),
    "conv3": ((384, 13, 13), 663_936),    # 192*9*384 + 384 = 663,552 + 384
    "conv4": ((256, 13, 13), 884_992),    # 384*9*256 + 256 = 884,736 + 256
    "conv5": ((256, 13, 13), 590_080),    # 256*9*256 + 256 = 589,824 + 256
    "pool3": ((256, 6, 6), 0),            # 9,216 values
    "fc4096a": ((4096,), 37_752_832),     # 9,216*4,096 + 4,096 = 37,748,736 + 4,096
    "dropout1": ((4096,), 0),
    "fc4096b": ((4096,), 16_781_312),     # 4,096*4,096 + 4,096 = 16,777,216 + 4,096
    "dropout2": ((4096,), 0),
    "fc1000": ((1000,), 4_097_000),       # 4,096*1,000 + 1,000
    "probs": ((1000,), 0),
}   # 23,296 + 307,392 + 663,936 + 884,992 + 590,080 + 37,752,832 + 16,781,312 + 4,097,000 = 61,100,840
# cc2's four-GPU hybrid: the 1gpu trunk (data-parallel, one column) and its fc layers split
# into four model-parallel columns of 1,024; `pass` layers join the columns (no parameters).
EXPECT_4GPU_HYBRID = {name: EXPECT_1GPU[name] for name in
                      ("conv1", "rnorm1", "pool1", "conv2", "rnorm2", "pool2", "conv3", "conv4", "conv5",
                       "pool3", "fc1000", "probs")}   # the trunk: 2,469,696; fc1000: 4,096*1,000 + 1,000
for col in "abcd":
    EXPECT_4GPU_HYBRID.update({
        f"fc1024{col}": ((1024,), 9_438_208),     # 9,216*1,024 + 1,024 = 9,437,184 + 1,024
        f"dropout1{col}": ((1024,), 0),
        f"pass1{col}": ((4096,), 0),              # dropout1a..d joined: 4*1,024
        f"fc1024b{col}": ((1024,), 4_195_328),    # 4,096*1,024 + 1,024 = 4,194,304 + 1,024
        f"dropout2{col}": ((1024,), 0),
    })
EXPECT_4GPU_HYBRID["pass2a"] = ((4096,), 0)
# 2,469,696 + 4*9,438,208 + 4*4,195,328 + 4,097,000
#   = 2,469,696 + 37,752,832 + 16,781,312 + 4,097,000 = 61,100,840: the 1gpu net's count

# (layers file stem, input shape, expected layers, hand total)
NETS = {
    "80sec": ("80sec", (3, 32, 32), EXPECT_80SEC, 145_578),
    "18pct": ("18pct", (3, 32, 32), EXPECT_18PCT, 89_578),
    "11pct-cc1": ("conv-local-11pct", (3, 24, 24), EXPECT_11PCT, 2_112_970),
    "11pct-cc2": ("cifar10-11pct", (3, 24, 24), EXPECT_11PCT, 2_112_970),
    "2gpu-model-cc2": ("imagenet-2gpu-model", (3, 224, 224), EXPECT_2GPU, 60_965_224),
    "2gpu-model-2012": ("alexnet2012-145", (3, 224, 224), EXPECT_2GPU, 60_965_224),
    "1gpu-cc2": ("imagenet-1gpu", (3, 224, 224), EXPECT_1GPU, 61_100_840),
    "4gpu-hybrid-cc2": ("imagenet-4gpu-data-model", (3, 224, 224), EXPECT_4GPU_HYBRID, 61_100_840),
}
_converted = {}


def converted(key):
    """The Conversion of a shipped net (converted once per test session)."""
    if key not in _converted:
        stem, shape, _, _ = NETS[key]
        _converted[key] = convert(str(DATA / f"layers-{stem}.cfg"), str(DATA / f"layer-params-{stem}.cfg"), shape)
    return _converted[key]


def yaml_layers(result):
    return {layer["name"]: layer for layer in parse_net(result.text).data["layers"]}


@pytest.mark.parametrize("key", NETS)
def test_shapes_and_parameter_counts_are_cuda_convnets(key):
    _, _, expect, total = NETS[key]
    assert sum(p for _, p in expect.values()) == total       # the hand sums agree with themselves
    result = converted(key)
    nodes = graph.build(parse_net(result.text))
    got = {n.name: (tuple(n.output_shape), sum(int(np.prod(s)) for s in n.layer.param_shapes().values()))
           for n in nodes}
    assert got == expect
    assert result.num_params == total
    assert f"{total:,} parameters" in result.text


@pytest.mark.parametrize("key, shipped", [("80sec", "cifar10-80sec"), ("18pct", "cifar10-18pct"),
                                          ("2gpu-model-cc2", "alexnet")])
def test_shapes_agree_with_the_hand_written_nets(key, shipped):
    """nets/*.yaml were written by hand from the same nets (alexnet.yaml with padding 2 and the
    floor rule where the converted conv1 has padding 0 and padding_end 3: the same 55x55)."""
    def table(spec):
        return {n.name: (tuple(n.output_shape), sum(int(np.prod(s)) for s in n.layer.param_shapes().values()))
                for n in graph.build(spec)}
    ours, theirs = table(parse_net(converted(key).text)), table(parse_net(str(ROOT / "nets" / f"{shipped}.yaml")))
    assert sum(p for _, p in ours.values()) == sum(p for _, p in theirs.values())
    if key != "2gpu-model-cc2":         # alexnet.yaml names its layers after the paper
        assert ours == theirs


# ---- what each net maps to -----------------------------------------------------------------
def dropped_notice(result):
    notes = [n for n in result.notices if n.startswith("accepted and dropped")]
    assert len(notes) == 1, result.notices
    return notes[0]


def test_80sec_mapping():
    result = converted("80sec")
    layers = yaml_layers(result)
    assert list(layers) == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "fc64", "fc10", "probs"]
    assert layers["conv1"] == {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 32, "size": 5,
                               "padding": 2, "init_w": 0.0001, "lr_b": 2}
    assert layers["pool1"]["neuron"] == "relu" and "neuron" not in layers["conv1"]
    assert layers["pool2"] == {"name": "pool2", "type": "pool", "inputs": ["conv2"], "mode": "avg",
                               "size": 3, "stride": 2}
    assert layers["fc64"]["wd"] == 7.5 and layers["fc64"]["neuron"] == "relu"   # 0.03 / 0.004
    assert layers["probs"]["inputs"] == ["fc10"]       # cost.logreg folded into the softmax
    assert all("gpu" not in v for v in layers.values())
    assert parse_net(result.text).train == {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.004,
                                            "schedule": "constant"}
    note = dropped_notice(result)
    assert note.count("partialSum") == 1 and "partialSum (conv1, conv2, conv3)" in note
    assert "sharedBiases (conv1, conv2, conv3)" in note
    header = result.text.split("\nname:")[0]
    assert "layers-80sec.cfg" in header and "layer-params-80sec.cfg" in header and "partialSum" in header


def test_18pct_response_normalisation_keeps_cuda_convnets_constants():
    layers = yaml_layers(converted("18pct"))
    # scale and pow as written; cc1 hard-codes minDiv = 1
    assert layers["rnorm1"] == {"name": "rnorm1", "type": "rnorm", "inputs": ["pool1"], "size": 3,
                                "alpha": 0.00005, "beta": 0.75, "k": 1}
    assert layers["conv2"]["inputs"] == ["rnorm1"]
    assert layers["fc10"]["wd"] == 250             # wc 1 against the net's 0.004


def test_11pct_cc1_and_cc2_flavours_give_the_same_layers():
    cc1, cc2 = converted("11pct-cc1"), converted("11pct-cc2")
    assert yaml_layers(cc1) == yaml_layers(cc2)
    layers = yaml_layers(cc1)
    assert layers["rnorm1"]["type"] == "cmrnorm"
    assert (layers["rnorm1"]["alpha"], layers["rnorm1"]["k"]) == (0.001, 1)
    assert layers["local3"] == {"name": "local3", "type": "local", "inputs": ["pool2"], "filters": 64,
                                "size": 3, "padding": 1, "neuron": "relu", "init_w": 0.04, "lr_b": 2}
    assert layers["conv1"]["wd"] == 0 and layers["fc10"]["wd"] == 2.5      # 0.01 / 0.004
    assert parse_net(cc1.text).train["weight_decay"] == 0.004
    assert "partialSum (conv1, conv2)" in dropped_notice(cc1)
    assert "sumWidth (conv1, conv2)" in dropped_notice(cc2)


def test_imagenet_two_gpu_model_wiring_and_schedule():
    result = converted("2gpu-model-cc2")
    layers = yaml_layers(result)
    conv1a = layers["conv1a"]
    # 224 -> 55 needs 3 zero rows and columns past the bottom/right edge: (55-1)*4 + 11 - 224
    assert (conv1a["stride"], conv1a.get("padding", 0), conv1a["padding_end"]) == (4, 0, 3)
    assert conv1a["gpu"] == 0 and layers["conv1b"]["gpu"] == 1
    assert layers["conv3b"]["inputs"] == ["pool2a", "pool2b"] and layers["conv3b"]["gpu"] == 1
    assert layers["conv4b"]["gpu"] == 1                     # inherited from its first input
    assert layers["fc2048bb"]["inputs"] == ["dropout1b", "dropout1a"]
    assert layers["fc1000"]["gpu"] == 0 and layers["probs"]["gpu"] == 0
    assert layers["dropout1b"] == {"name": "dropout1b", "type": "dropout", "inputs": ["fc2048b"],
                                   "gpu": 1, "rate": 0.5}
    assert (layers["rnorm1a"]["alpha"], layers["rnorm1a"]["beta"], layers["rnorm1a"]["k"]) == (1e-4, 0.75, 2)
    assert layers["cnorm2a"]["type"] == "rnorm" and layers["cnorm2a"]["k"] == 1
    assert all(layers[n].get("lr_b") == 2 for n in ("conv1a", "fc2048ba", "fc1000"))   # 0.04 / 0.02
    train = parse_net(result.text).train
    assert train == {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0005,
                     "schedule": {"type": "dexp", "factor": 250, "steps": 4}}
    approx = [n for n in result.notices if n.startswith("approximated")]
    assert len(approx) == 1 and "epsB=dexp[base=0.04;tgtFactor=25;numSteps=2]" in approx[0]
    assert any("topk=5" in n for n in result.notices)
    assert "randSparse (conv3a, conv3b)" in dropped_notice(result)


def test_dexp_schedule_has_cuda_convnet2s_levels():
    """epsW=dexp[base=0.02;tgtFactor=250;numSteps=4]: levels 0.02 * 250^(-i/3), switching at
    progress 1/4, 1/2, 3/4 (cuda-convnet2's DiscreteExpParameterSchedule)."""
    train = dict(parse_net(converted("2gpu-model-cc2").text).train, epochs=8)
    schedule = settings.make_schedule(settings.resolve(train))
    levels = [0.02 * 250 ** (-i / 3) for i in range(4)]
    for epoch, level in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (7, 3)]:
        assert schedule.lr(epoch, 0.5) == pytest.approx(levels[level], rel=1e-12)
    assert schedule.lr(7, 0.999) == pytest.approx(0.02 / 250)


def test_alexnet_2012_flavour_hs_layers_and_constant_rates():
    result = converted("2gpu-model-2012")
    layers = yaml_layers(result)
    assert layers["dropout1a"] == {"name": "dropout1a", "type": "dropout2", "inputs": ["fc2048a"],
                                   "gpu": 0, "keep": 0.5}
    assert layers["conv3b"]["gpu"] == 1
    assert parse_net(result.text).train == {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
                                            "schedule": "constant"}
    assert "partialSum (conv1a, conv2a, conv1b" in dropped_notice(result)
    same = yaml_layers(converted("2gpu-model-cc2"))
    for name, layer in layers.items():          # the same net as cc2's file but for dropout
        if not name.startswith("dropout"):
            assert layer == same[name], name


def test_imagenet_one_gpu_classic_dropout_and_bias_init():
    result = converted("1gpu-cc2")
    layers = yaml_layers(result)
    assert layers["dropout1"]["type"] == "dropout2" and layers["dropout1"]["keep"] == 0.5
    assert layers["fc1000"]["init_b"] == -7
    assert layers["conv1"]["padding_end"] == 3
    assert "updatePeriod (conv1" in dropped_notice(result)


def test_imagenet_four_gpu_hybrid_columns():
    """Data-parallel conv trunk (gpu=0,1,2,3) -> column 0; model-parallel fc layers gpu=k ->
    column k; layers without gpu= take their first input's column, as in cc2."""
    result = converted("4gpu-hybrid-cc2")
    layers = yaml_layers(result)
    assert {layers[n]["gpu"] for n in ("conv1", "rnorm1", "conv5", "pool3")} == {0}
    assert [layers[f"fc1024{c}"]["gpu"] for c in "abcd"] == [0, 1, 2, 3]
    assert [layers[f"dropout2{c}"]["gpu"] for c in "abcd"] == [0, 1, 2, 3]      # inherited
    assert layers["fc1024c"]["inputs"] == ["pool3"] and layers["dropout1c"]["type"] == "dropout2"
    assert layers["pass1c"] == {"name": "pass1c", "type": "concat", "gpu": 2, "mode": "flat",
                                "inputs": ["dropout1a", "dropout1b", "dropout1c", "dropout1d"]}
    assert layers["fc1024bc"]["inputs"] == ["pass1c"] and layers["fc1024bc"]["gpu"] == 2
    assert layers["fc1000"]["inputs"] == ["pass2a"] and layers["fc1000"]["gpu"] == 0
    assert layers["probs"]["gpu"] == 0
    # conv epsW base 0.04 against the net's 0.01 (the fc layers' and the most common)
    assert parse_net(result.text).train["lr"] == 0.01
    assert (layers["conv3"]["lr_w"], layers["conv3"]["lr_b"]) == (4, 8) and layers["fc1024a"]["lr_b"] == 2
    assert any(n.startswith("conv1: gpu=0,1,2,3 (data-parallel replicas) runs as one column on gpu 0")
               for n in result.notices)
    hybrid = [n for n in result.notices if "4 passes" in n]
    assert len(hybrid) == 1 and "fc1024a, fc1024b, fc1024c, fc1024d, fc1024ba" in hybrid[0]
    assert "conv" not in hybrid[0].split("ran")[1].split("in 4 passes")[0]
    net = engine.load(result.text, seed=0)      # built, not run: AlexNet size
    assert net.num_params == 61_100_840
    columns = {layer.name: layer.gpu for layer in net.layers}
    assert [columns[f"fc1024b{c}"] for c in "abcd"] == [0, 1, 2, 3] and columns["conv2"] == 0


def test_model_parallel_columns_up_to_the_engines_limit(tmp_path):
    """gpu=k for any of our columns 0..7; a small four-column net converts and trains a step."""
    cols = "".join(f"[fc{k}]\ntype=fc\ninputs=pool1\noutputs=4\ngpu={k}\n\n" for k in range(4))
    layers = edit(TINY_LAYERS, "[fc10]\ntype=fc\ninputs=pool1", cols + "[fc10]\ntype=fc\ninputs=fc0,fc1,fc2,fc3")
    layers = edit(layers, "partialSum=1\n", "partialSum=1\ngpu=0,1,2,3\n")
    params = TINY_PARAMS + "".join(f"\n[fc{k}]\nepsW=0.01\nepsB=0.02\nmomW=0.9\nmomB=0.9\nwc=0.001\n"
                                   for k in range(4))
    result, _, _ = tiny(tmp_path, layers=layers, params=params)
    out = yaml_layers(result)
    assert [out[f"fc{k}"]["gpu"] for k in range(4)] == [0, 1, 2, 3] and out["fc10"]["gpu"] == 0
    # conv1 3*9*16 + 16 = 448; fc0..3 (16*4*4 = 256 inputs) 256*4 + 4 = 1,028 each; fc10 16*10 + 10
    assert result.num_params == 448 + 4 * 1_028 + 170
    sgd_step(result)
    err = error(tmp_path, layers=edit(layers, "gpu=3\n", "gpu=8\n"), params=params)
    assert err.key == "gpu" and "columns gpu 0..7; got 8" in err.message


# ---- converted nets train ------------------------------------------------------------------
def sgd_step(result, batch=2, seed=0):
    net = engine.load(result.text, seed=seed)
    s = settings.resolve(parse_net(result.text).train)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + net.input_shape).astype(np.float32)
    labels = rng.integers(0, net.num_classes, batch)
    before = {k: v.copy() for k, v in net.parameters().items()}
    loss, grads = net.loss_and_grads(x, labels, train=True)
    grads = {k: g.copy() for k, g in grads.items()}
    sgd = SGD.for_net(net, s["momentum"], s["weight_decay"])
    sgd.step(grads, s["lr"])
    assert np.isfinite(loss)
    after = net.parameters()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    return before, grads, sgd


# one of each kind in the fast run; the others (the same layer types, larger) in --full
SLOW = pytest.mark.slow


@pytest.mark.parametrize("key", [pytest.param("80sec", marks=SLOW), "18pct", pytest.param("11pct-cc1", marks=SLOW),
                                 pytest.param("11pct-cc2", marks=SLOW)])
def test_converted_cifar_nets_train_a_step(key):
    sgd_step(converted(key))


@pytest.mark.parametrize("key", [pytest.param("2gpu-model-cc2", marks=SLOW), pytest.param("2gpu-model-2012", marks=SLOW),
                                 "1gpu-cc2"])
def test_converted_imagenet_nets_train_a_step(key):
    sgd_step(converted(key), batch=2)


def test_step_applies_cuda_convnets_update_rule():
    """First step (momentum buffer 0) of cuda-convnet's rule for fc10 of the 80sec net:
    weights inc = -wc*epsW*w - epsW*grad with epsW 0.001, wc 0.03; biases inc = -epsB*grad, epsB 0.002."""
    before, grads, sgd = sgd_step(converted("80sec"))
    inc = sgd.velocity          # this step's increment (the momentum buffer was zero)
    for layer, eps_w, wc in [("fc10", 0.001, 0.03), ("conv1", 0.001, 0.004)]:
        w, g = before[f"{layer}.weight"], grads[f"{layer}.weight"]
        np.testing.assert_allclose(inc[f"{layer}.weight"], -wc * eps_w * w - eps_w * g, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(inc[f"{layer}.bias"], -0.002 * grads[f"{layer}.bias"], rtol=1e-5, atol=1e-12)


# ---- cuda-convnet semantics our layers must match --------------------------------------------
def test_multi_input_conv_is_the_joined_conv():
    """cuda-convnet sums one convolution per input (own weights, one bias); ours joins the
    inputs along channels under one [F, C1 + C2, k, k] weight: the same numbers."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((2, 5, 7, 7))
    w = rng.standard_normal((4, 8, 3, 3))
    b = rng.standard_normal(4)
    joined = conv_ref.forward(np.concatenate([x1, x2], axis=1), w, b, stride=2, padding=1)
    summed = (conv_ref.forward(x1, w[:, :3], b, stride=2, padding=1)
              + conv_ref.forward(x2, w[:, 3:], np.zeros(4), stride=2, padding=1))
    np.testing.assert_allclose(joined, summed, rtol=1e-12)


def test_ceil_output_rule_is_padding_end():
    # 1 + ceil((2p + in - k)/s) outputs = floor((in + 2p + e - k)/s) + 1 with e = (-(2p + in - k)) mod s
    for side, k, s, p in [(224, 11, 4, 0), (24, 5, 1, 2), (13, 3, 2, 0), (10, 4, 3, 1), (7, 7, 5, 0)]:
        cc = 1 + -(-(2 * p + side - k) // s)
        e = (-(2 * p + side - k)) % s
        assert (side + 2 * p + e - k) // s + 1 == cc


# ---- values --------------------------------------------------------------------------------
def test_parse_schedule():
    assert parse_schedule("0.001") == CCSchedule("const", 0.001, text="0.001")
    assert parse_schedule("dexp[base=0.01;tgtFactor=250;numSteps=4]").shape == ("dexp", 250.0, 4)
    assert parse_schedule("EXP[ base = 0.01 ; tgtfactor = 10 ]").shape == ("exp", 10.0, None)
    # cc2 keeps only the final level when numSteps is 1
    one = parse_schedule("dexp[base=0.01;tgtFactor=10;numSteps=1]")
    assert one.shape == ("const", None, None) and one.base == pytest.approx(0.001)
    assert parse_schedule("linear[base=0.1;tgtFactor=10]").shape == ("linear", 10.0, None)
    for bad, why in [("dexp[base=0.1;tgtFactor=10]", "numSteps"),
                     ("fast", "not a number or a schedule"), ("exp[base=x;tgtFactor=2]", "numbers")]:
        with pytest.raises(ValueError, match=why):
            parse_schedule(bad)


def test_parse_neuron():
    assert parse_neuron("relu") == "relu"
    assert parse_neuron(" tanh[1.7159, 0.6667] ") == "tanh[1.7159,0.6667]"
    assert parse_neuron("ident") is None
    for bad, why in [("tanh", "takes 2"), ("relu[1]", "takes 0"), ("swish", "not a cuda-convnet neuron"),
                     ("brelu[x]", "numbers")]:
        with pytest.raises(ValueError, match=why):
            parse_neuron(bad)


def test_schedule_kinds_exp_matches_cuda_convnet2():
    """exp[base=b;tgtFactor=t] is b * t^(-progress), as our exp schedule."""
    s = Schedule(0.1, kind="exp", factor=50.0, total_epochs=4)
    for epoch, frac in [(0, 0.0), (1, 0.5), (3, 0.99)]:
        assert s.lr(epoch, frac) == pytest.approx(0.1 * 50 ** (-(epoch + frac) / 4))


# ---- small nets written inline: each feature and each error --------------------------------
TINY_LAYERS = """\
[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[conv1]
type=conv
inputs=data
channels=3
filters=16
filterSize=3
padding=1
neuron=relu
partialSum=1

[pool1]
type=pool
pool=max
inputs=conv1
sizeX=2
stride=2
channels=16

[fc10]
type=fc
inputs=pool1
outputs=10

[probs]
type=softmax
inputs=fc10

[logprob]
type=cost.logreg
inputs=labels,probs
"""
TINY_PARAMS = """\
[conv1]
epsW=0.01
epsB=0.02
momW=0.9
momB=0.9
wc=0.001

[fc10]
epsW=0.01
epsB=0.02
momW=0.9
momB=0.9
wc=0.001

[logprob]
coeff=1
"""


def tiny(tmp_path, layers=TINY_LAYERS, params=TINY_PARAMS, shape=(3, 8, 8)):
    lp, pp = tmp_path / "layers.cfg", tmp_path / "params.cfg"
    lp.write_text(layers)
    pp.write_text(params)
    return convert(str(lp), str(pp), shape), str(lp), str(pp)


def error(tmp_path, layers=TINY_LAYERS, params=TINY_PARAMS, shape=(3, 8, 8)):
    with pytest.raises(ConvertError) as info:
        tiny(tmp_path, layers, params, shape)
    return info.value


def edit(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


def line_of(path, needle):
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if needle in line)


def test_tiny_net_converts_and_keeps_names(tmp_path):
    result, lp, _ = tiny(tmp_path)
    layers = yaml_layers(result)
    assert list(layers) == ["conv1", "pool1", "fc10", "probs"]
    assert layers["conv1"]["neuron"] == "relu" and layers["conv1"]["lr_b"] == 2
    assert parse_net(result.text).name == "layers"


@pytest.mark.parametrize("old, new, key, words", [
    ("partialSum=1\n", "initWFunc=mymod.init(2)\n", "initWFunc", "initialisation functions"),
    ("partialSum=1\n", "filterSizes=3\n", "filterSizes", "not a key"),
    ("partialSum=1\n", "sharedBiases=2\n", "sharedBiases", "true or false"),
    ("partialSum=1\n", "weightSource=conv0\n", "weightSource", "shared weight"),
    ("channels=3\n", "channels=4\n", "channels", "has 3 channels"),
    ("neuron=relu\n", "neuron=nrelu\n", "neuron", "our conv layer's `neuron`"),
    ("neuron=relu\n", "neuron=tanh\n", "neuron", "takes 2 bracketed"),
    ("neuron=relu\n", "neuron=swish\n", "neuron", "not a cuda-convnet neuron"),
    ("neuron=relu\n", "gpu=8\n", "gpu", "columns gpu 0..7"),
    ("sizeX=2\n", "sizeX=2\nstart=1\n", "start", "corner"),
    ("sizeX=2\n", "sizeX=2\noutputsX=3\n", "outputsX", "differs from the automatic 4"),
    ("pool=max\n", "pool=maxabs\n", "pool", "max and avg"),
    ("type=pool\n", "type=cmpool\n", "type", "no equivalent"),
    ("type=pool\n", "type=pool2\n", "type", "unknown cuda-convnet layer type"),
    ("inputs=pool1\n", "inputs=pool9\n", "inputs", "not defined above"),
])
def test_definition_errors_name_file_line_section_and_key(tmp_path, old, new, key, words):
    err = error(tmp_path, layers=edit(TINY_LAYERS, old, new))
    lp = str(tmp_path / "layers.cfg")
    assert err.file == lp and err.key == key and words in err.message
    assert err.line == line_of(lp, new.strip().splitlines()[-1])
    assert str(err).startswith(f"{lp}:{err.line}: layer '") and f"key '{key}'" in str(err)


@pytest.mark.parametrize("old, new, key, words", [
    ("wc=0.001\n", "wc=0.001\nwball=2\n", "wball", "max-norm"),
    ("momB=0.9\n", "momB=0.5\n", "momB", "one momentum"),
    ("epsW=0.01\n", "epsW=0.01\ndropout=0.5\n", "dropout", "not a params-file key"),
    ("coeff=1\n", "coeff=2\n", "coeff", "cost weight"),
])
def test_params_errors_name_the_params_file(tmp_path, old, new, key, words):
    err = error(tmp_path, params=edit(TINY_PARAMS, old, new))
    pp = str(tmp_path / "params.cfg")
    assert err.file == pp and err.key == key and words in err.message
    assert err.line == line_of(pp, new.strip().splitlines()[-1])


def test_structural_errors(tmp_path):
    err = error(tmp_path, params=TINY_PARAMS.replace("[fc10]", "[fc11]"))
    assert err.file == str(tmp_path / "layers.cfg") and err.layer == "fc10" and "[fc10] section" in err.message
    err = error(tmp_path, layers=edit(TINY_LAYERS, "[probs]\ntype=softmax\ninputs=fc10\n",
                                      "[probs]\ntype=softmax\ninputs=fc10\n\n[spare]\ntype=fc\ninputs=fc10\n"
                                      "outputs=3\n"))
    assert err.layer == "spare" and "unused" in err.message
    err = error(tmp_path, layers=edit(TINY_LAYERS, "outputs=10\n", "outputs=10\noutputs=11\n"))
    assert "twice" in err.message and err.line == line_of(tmp_path / "layers.cfg", "outputs=11")
    err = error(tmp_path, layers=edit(TINY_LAYERS, "outputs=10\n", "outputs 10\n"))
    assert "key=value" in err.message and err.line == line_of(tmp_path / "layers.cfg", "outputs 10")
    err = error(tmp_path, shape=(1, 8, 8))
    assert err.key == "channels" and "has 1 channels" in err.message
    with pytest.raises(ConvertError, match="cannot read"):
        convert(str(tmp_path / "missing.cfg"), str(tmp_path / "params.cfg"), (3, 8, 8))


def test_multi_input_conv_with_groups_is_refused(tmp_path):
    layers = edit(TINY_LAYERS, "[pool1]", "[conv2]\ntype=conv\ninputs=conv1,data\nchannels=16,3\nfilters=16\n"
                                          "filterSize=3\npadding=1\ngroups=1,2\n\n[pool1]")
    layers = edit(layers, "inputs=conv1\nsizeX", "inputs=conv2\nsizeX")
    params = TINY_PARAMS + "\n[conv2]\nepsW=0.01\nepsB=0.02\nmomW=0.9\nmomB=0.9\n"
    err = error(tmp_path, layers=layers, params=params)
    assert err.key == "groups" and "several inputs" in err.message
    result, _, _ = tiny(tmp_path, layers=layers.replace("groups=1,2\n", ""), params=params)
    conv2 = yaml_layers(result)["conv2"]
    assert conv2["inputs"] == ["conv1", "data"]
    # one [16, 16 + 3, 3, 3] weight, as cuda-convnet's two (16*9 x 16 and 3*9 x 16) matrices
    assert result.num_params == (3 * 9 * 16 + 16) + (19 * 9 * 16 + 16) + (16 * 4 * 4 * 10 + 10)


def test_neuron_on_a_layer_without_one_becomes_a_neuron_layer(tmp_path):
    layers = edit(TINY_LAYERS, "[fc10]", "[norm1]\ntype=cmrnorm\ninputs=pool1\nchannels=16\nsize=5\n"
                                         "neuron=abs\n\n[fc10]")
    layers = edit(layers, "inputs=pool1\noutputs", "inputs=norm1\noutputs")
    params = TINY_PARAMS + "\n[norm1]\nscale=0.001\npow=0.75\nminDiv=2\n"
    result, _, _ = tiny(tmp_path, layers=layers, params=params)
    out = yaml_layers(result)
    assert out["norm1_neuron"] == {"name": "norm1_neuron", "type": "neuron", "inputs": ["norm1"], "fn": "abs"}
    assert out["fc10"]["inputs"] == ["norm1_neuron"]
    assert (out["norm1"]["alpha"], out["norm1"]["k"]) == (0.001, 2)
    engine.load(result.text)


def test_bracket_neurons_fused_or_as_neuron_layers(tmp_path):
    layers = edit(TINY_LAYERS, "neuron=relu\n", "neuron=tanh[1.7159, 0.6667]\n")
    layers = edit(layers, "[fc10]", "[norm1]\ntype=cmrnorm\ninputs=pool1\nchannels=16\nsize=5\n"
                                    "neuron=brelu[6]\n\n[lin]\ntype=neuron\ninputs=norm1\nneuron=linear[2,1]\n\n"
                                    "[fc10]")
    layers = edit(layers, "inputs=pool1\noutputs", "inputs=lin\noutputs")
    params = TINY_PARAMS + "\n[norm1]\nscale=0.001\npow=0.75\n"
    result, _, _ = tiny(tmp_path, layers=layers, params=params)
    out = yaml_layers(result)
    assert out["conv1"]["neuron"] == "tanh[1.7159,0.6667]"
    assert out["norm1_neuron"]["fn"] == "brelu[6]" and out["lin"]["inputs"] == ["norm1_neuron"]
    assert out["lin"]["fn"] == "linear[2,1]"
    net = engine.load(result.text)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    acts = net.forward(x, outputs=["norm1_neuron"])["norm1_neuron"]
    assert acts.min() >= 0 and acts.max() <= 6


def test_old_cc1_norm_keys_in_the_definition_file(tmp_path):
    layers = edit(TINY_LAYERS, "[fc10]", "[norm1]\ntype=rnorm\ninputs=pool1\nchannels=16\nsizeX=3\n"
                                         "scale=0.002\npow=0.5\n\n[fc10]")
    layers = edit(layers, "inputs=pool1\noutputs", "inputs=norm1\noutputs")
    result, _, _ = tiny(tmp_path, layers=layers)
    norm = yaml_layers(result)["norm1"]
    assert (norm["size"], norm["alpha"], norm["beta"], norm["k"]) == (3, 0.002, 0.5, 1)


def test_data_parallel_gpus_and_disabled_dropout(tmp_path):
    layers = edit(TINY_LAYERS, "partialSum=1\n", "partialSum=1\ngpu=0,1\n")
    layers = edit(layers, "[fc10]\ntype=fc\ninputs=pool1", "[drop]\ntype=dropout2\ninputs=pool1\n\n"
                                                          "[fc10]\ntype=fc\ninputs=drop")
    params = TINY_PARAMS + "\n[drop]\nkeep=0.8\nenable=0\n"
    result, _, _ = tiny(tmp_path, layers=layers, params=params)
    out = yaml_layers(result)
    assert "drop" not in out and out["fc10"]["inputs"] == ["pool1"]
    assert any("data-parallel" in n for n in result.notices)
    assert any("enable=0" in n for n in result.notices)


def test_eltsum_coeffs_cc1_definition_file_or_cc2_params_file(tmp_path):
    branch = ("[conv2]\ntype=conv\ninputs=data\nchannels=3\nfilters=16\nfilterSize=3\npadding=1\n\n"
              "[sum]\ntype=eltsum\ninputs=conv1,conv2\n{coeffs}\n[pool1]")
    params = TINY_PARAMS + "\n[conv2]\nepsW=0.01\nepsB=0.02\nmomW=0.9\nmomB=0.9\n"
    for defs, extra in [("coeffs=1,-0.5\n", ""), ("", "\n[sum]\ncoeffs=1,-0.5\n")]:
        layers = edit(TINY_LAYERS, "[pool1]", branch.format(coeffs=defs))
        layers = edit(layers, "inputs=conv1\nsizeX", "inputs=sum\nsizeX")
        result, _, _ = tiny(tmp_path, layers=layers, params=params + extra)
        assert yaml_layers(result)["sum"]["coeffs"] == [1, -0.5]


def test_schedules_of_different_shapes_are_approximated_and_said(tmp_path):
    params = TINY_PARAMS.replace("epsW=0.01", "epsW=exp[base=0.01;tgtFactor=100]", 1)
    result, _, _ = tiny(tmp_path, params=params)
    train = parse_net(result.text).train
    # conv1's exp and fc10's const: one of them sets the net's schedule, the other follows it
    assert train["lr"] == 0.01 and train["schedule"] in ("constant", {"type": "exp", "factor": 100})
    assert any(n.startswith("approximated") for n in result.notices)
    params = TINY_PARAMS.replace("epsW=0.01", "epsW=exp[base=0.01;tgtFactor=100]")
    result, _, _ = tiny(tmp_path, params=params)
    assert parse_net(result.text).train["schedule"] == {"type": "exp", "factor": 100}
    assert any(n.startswith("approximated") and "epsB=0.02 on conv1, fc10" in n for n in result.notices)
    # the biases on the same kind of schedule as the weights: exact, nothing to say
    result, _, _ = tiny(tmp_path, params=params.replace("epsB=0.02", "epsB=exp[base=0.02;tgtFactor=100]"))
    assert yaml_layers(result)["fc10"]["lr_b"] == 2
    assert not any(n.startswith("approximated") for n in result.notices)


# ---- the command line ----------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_cli_converts_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "80sec.yaml"
    args = ("convert", DATA / "layers-80sec.cfg", DATA / "layer-params-80sec.cfg", "-o", out,
            "--input", "3,32,32", "--epochs", "10")
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr
    assert "145,578 parameters" in p.stdout
    assert "note: accepted and dropped" in p.stderr and "partialSum" in p.stderr
    net = engine.load(str(out))
    assert net.num_params == 145_578 and parse_net(str(out)).train["epochs"] == 10
    text = out.read_text()
    from engine import cli
    assert cli.main(list(map(str, args))) == 2                # exists: not overwritten
    assert out.read_text() == text
    assert cli.main(list(map(str, args)) + ["--force", "--name", "fast"]) == 0
    assert parse_net(str(out)).name == "fast"
    assert [p.name for p in tmp_path.iterdir()] == ["80sec.yaml"]     # no temporary file left


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "layers.cfg"
    bad.write_text(edit(TINY_LAYERS, "partialSum=1\n", "initWFunc=mymod.init(2)\n"))
    (tmp_path / "params.cfg").write_text(TINY_PARAMS)
    p = run_cli("convert", bad, tmp_path / "params.cfg", "-o", tmp_path / "x.yaml", "--input", "3,8,8")
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert lines[0].startswith(f"error: {bad}:{line_of(bad, 'initWFunc')}: layer 'conv1', key 'initWFunc'")
    assert not (tmp_path / "x.yaml").exists()
    from engine import cli
    for shape in ("3,8", "3,8,9", "a,b,c"):
        assert cli.main(["convert", str(bad), str(tmp_path / "params.cfg"), "-o", str(tmp_path / "y.yaml"),
                         "--input", shape]) == 2
