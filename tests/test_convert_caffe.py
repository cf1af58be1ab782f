"""`python -m engine convert NET.prototxt`: Caffe nets become YAML nets with the same layers,
wiring, output shapes and parameter counts.

The prototxt files are written here from the facts in the research notes (BVLC AlexNet's
train_val.prototxt: conv1 96 k11 s4; conv2 256 k5 pad 2 group 2; conv3 384 k3 pad 1; conv4 384
and conv5 256 with group 2; LRN local_size 5 alpha 1e-4 beta 0.75; max pooling 3/2; fc
4096/4096/1000; data crop 227; 60,965,224 parameters; CaffeNet pools before the LRN).
Every expected shape and parameter count is worked out by hand from Caffe's rules:

    conv output side   floor((in + 2*pad - kernel) / stride) + 1
    pool output side   ceil((in + 2*pad - kernel) / stride) + 1, one less if the last window
                       would start in the padding: (out - 1)*stride >= in + pad
    conv weights       in_channels/group * kernel^2 * num_output, + num_output biases
    fc weights         inputs * num_output, + num_output biases
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
import layers
from engine import cli, settings
from engine.config import parse_net
from engine.convert import ConvertError, convert_caffe
from engine.convert import prototxt
from engine.solver import SGD

ROOT = Path(__file__).parent.parent

ALEXNET = """\
name: "AlexNet"
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 mean_file: "data/ilsvrc12/imagenet_mean.binaryproto" }
  data_param { source: "examples/imagenet/ilsvrc12_train_lmdb" batch_size: 256 backend: LMDB }
}
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TEST }
  transform_param { mirror: false crop_size: 227 mean_file: "data/ilsvrc12/imagenet_mean.binaryproto" }
  data_param { source: "examples/imagenet/ilsvrc12_val_lmdb" batch_size: 50 backend: LMDB }
}
layer {
  name: "conv1"  type: "Convolution"  bottom: "data"  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 96 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layer {
  name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 256 pad: 2 kernel_size: 5 group: 2
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer {
  name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layer {
  name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 384 pad: 1 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer {
  name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 384 pad: 1 kernel_size: 3 group: 2
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer {
  name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 256 pad: 1 kernel_size: 3 group: 2
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer {
  name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 4096
    weight_filler { type: "gaussian" std: 0.005 }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer {
  name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 4096
    weight_filler { type: "gaussian" std: 0.005 }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer {
  name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 1000
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0 }
  }
}
layer {
  name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""

SOLVER = """\
net: "models/bvlc_alexnet/train_val.prototxt"
test_iter: 1000
test_interval: 1000
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 100000
display: 20
max_iter: 450000
momentum: 0.9
weight_decay: 0.0005
snapshot: 10000
snapshot_prefix: "models/bvlc_alexnet/caffe_alexnet_train"
solver_mode: GPU
"""

# name: (output shape, parameters)
EXPECT_ALEXNET = {
    "conv1": ((96, 55, 55), 34_944),     # (227 - 11)/4 + 1 = 55; 3*11*11*96 + 96 = 34,848 + 96
    "norm1": ((96, 55, 55), 0),
    "pool1": ((96, 27, 27), 0),          # ceil((55 - 3)/2) + 1 = 27
    "conv2": ((256, 27, 27), 307_456),   # (27 + 4 - 5)/1 + 1 = 27; 96/2*5*5*256 + 256 = 307,200 + 256
    "norm2": ((256, 27, 27), 0),
    "pool2": ((256, 13, 13), 0),         # ceil((27 - 3)/2) + 1 = 13
    "conv3": ((384, 13, 13), 885_120),   # 256*3*3*384 + 384 = 884,736 + 384
    "conv4": ((384, 13, 13), 663_936),   # 384/2*9*384 + 384 = 663,552 + 384
    "conv5": ((256, 13, 13), 442_624),   # 384/2*9*256 + 256 = 442,368 + 256
    "pool5": ((256, 6, 6), 0),           # ceil((13 - 3)/2) + 1 = 6
    "fc6": ((4096,), 37_752_832),        # 256*6*6 = 9,216 inputs; 9,216*4,096 + 4,096
    "drop6": ((4096,), 0),
    "fc7": ((4096,), 16_781_312),        # 4,096*4,096 + 4,096
    "drop7": ((4096,), 0),
    "fc8": ((1000,), 4_097_000),         # 4,096*1,000 + 1,000
    "loss": ((1000,), 0),
}
# 34,944 + 307,456 + 885,120 + 663,936 + 442,624 = 2,334,080 (conv)
# + 37,752,832 + 16,781,312 + 4,097,000 = 58,631,144 (fc): 60,965,224, the notes' BVLC count
ALEXNET_PARAMS = 60_965_224


def shapes_and_params(result):
    net = engine.load(result.text)
    return {n.name: (tuple(n.output_shape), sum(int(np.prod(s)) for s in n.layer.param_shapes().values()))
            for n in net.layers}, net


def yaml_layers(result):
    return {spec.name: dict(spec.cfg, type=spec.type, inputs=spec.inputs, **spec.solver)
            for spec in parse_net(result.text).layers}


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error(tmp_path, text, **kwargs):
    with pytest.raises(ConvertError) as e:
        convert_caffe(write(tmp_path, text), **kwargs)
    return e.value


def line_of(text, needle, occurrence=1):
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[occurrence - 1]


def test_alexnet_shapes_parameters_and_solver(tmp_path):
    result = convert_caffe(write(tmp_path, ALEXNET), solver=write(tmp_path, SOLVER, "solver.prototxt"),
                           train_images=1_281_167)
    got, net = shapes_and_params(result)
    assert got == EXPECT_ALEXNET
    assert net.num_params == result.num_params == ALEXNET_PARAMS == sum(p for _, p in EXPECT_ALEXNET.values())
    assert net.input_shape == (3, 227, 227)          # crop_size 227, 3 channels assumed (a Data layer)
    out = yaml_layers(result)
    # in-place ReLUs fused; TEST-phase data and accuracy dropped; names kept
    assert [n for n in out] == list(EXPECT_ALEXNET)
    assert all(out[n]["neuron"] == "relu" for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"))
    assert out["fc8"]["neuron"] is None and out["loss"]["type"] == "softmax"
    assert out["conv2"]["groups"] == out["conv4"]["groups"] == out["conv5"]["groups"] == 2
    assert out["conv1"]["groups"] == out["conv3"]["groups"] == 1
    assert out["conv2"]["padding"] == 2 and out["conv1"]["stride"] == 4
    # LRN: Caffe's alpha is already divided by local_size, as our cmrnorm's; k defaults to 1
    assert {k: out["norm1"][k] for k in ("size", "alpha", "beta", "k")} == \
        {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
    assert out["drop6"]["type"] == "dropout" and out["drop6"]["rate"] == 0.5
    # param { lr_mult: 1 decay_mult: 1 } { lr_mult: 2 decay_mult: 0 }: lr_b 2 (biases get no decay here)
    assert (out["conv1"]["lr_w"], out["conv1"]["lr_b"], out["conv1"]["wd"]) == (1.0, 2.0, 1.0)
    assert out["conv2"]["init_b"] == 0.1 and out["fc6"]["init_w"] == 0.005
    train = parse_net(result.text).train
    # 1,281,167 / 256 = 5,004.6 iterations an epoch: max_iter 450,000 = 89.9 -> 90 epochs;
    # stepsize 100,000 -> drops at 20.0, 40.0, 60.0, 80.0 epochs (rounded)
    assert train["epochs"] == 90 and train["batch"] == 256
    assert (train["lr"], train["momentum"], train["weight_decay"]) == (0.01, 0.9, 0.0005)
    assert train["schedule"] == {"type": "step", "epochs": [20, 40, 60, 80], "factor": 0.1}
    assert train["augment"] == {"flip": True, "crop": True}
    assert any("TEST-phase layers dropped: data, accuracy" in n for n in result.notices)
    assert any("3 (colour) assumed" in n for n in result.notices)
    settings.resolve(train)                          # a valid train: section


def caffenet():
    """CaffeNet: AlexNet with each pooling before its LRN."""
    text = ALEXNET.replace('bottom: "conv1" top: "norm1"', 'bottom: "pool1" top: "norm1"')
    text = text.replace('bottom: "norm1" top: "pool1"', 'bottom: "conv1" top: "pool1"')
    text = text.replace('bottom: "pool1" top: "conv2"', 'bottom: "norm1" top: "conv2"')
    text = text.replace('bottom: "conv2" top: "norm2"', 'bottom: "pool2" top: "norm2"')
    text = text.replace('bottom: "norm2" top: "pool2"', 'bottom: "conv2" top: "pool2"')
    text = text.replace('bottom: "pool2" top: "conv3"', 'bottom: "norm2" top: "conv3"')
    # the layers in CaffeNet's order (Caffe needs every bottom defined above)
    blocks = text.split("layer {")
    order = [b.split('name: "')[1].split('"')[0] for b in blocks[1:]]
    by = dict(zip(order, blocks[1:]))
    for a, b in (("norm1", "pool1"), ("norm2", "pool2")):
        i, j = order.index(a), order.index(b)
        order[i], order[j] = order[j], order[i]
    parts = [blocks[0]]
    for i, name in enumerate(order):       # the two `data` layers share a name
        parts.append(blocks[1:][i] if name == "data" else by[name])
    return "layer {".join(parts).replace('name: "AlexNet"', 'name: "CaffeNet"')


def test_caffenet_pools_before_norm(tmp_path):
    text = caffenet()
    assert text.index('name: "pool1"') < text.index('name: "norm1"')
    result = convert_caffe(write(tmp_path, text))
    got, net = shapes_and_params(result)
    expect = dict(EXPECT_ALEXNET, norm1=((96, 27, 27), 0), norm2=((256, 13, 13), 0))   # after pooling
    assert got == expect and list(got) == ["conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3",
                                           "conv4", "conv5", "pool5", "fc6", "drop6", "fc7", "drop7", "fc8",
                                           "loss"]
    out = yaml_layers(result)
    assert out["pool1"]["inputs"] == ["conv1"] and out["norm1"]["inputs"] == ["pool1"]
    assert out["conv2"]["inputs"] == ["norm1"]
    assert net.num_params == ALEXNET_PARAMS
    assert parse_net(result.text).name == "CaffeNet" and parse_net(result.text).train == {
        "batch": 256, "augment": {"flip": True, "crop": True}}


# ---- an inception-style fragment: Concat, in-place ReLUs, a TEST-only layer ------------------
def conv(name, bottom, n, k, pad=0, relu=True):
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad}\n'
            f'    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.2 }} }} }}\n')
    if relu:
        text += f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


INCEPTION = (
    'name: "inception_3a"\n'
    'layer { name: "input" type: "Input" top: "data" top: "label"\n'
    '  input_param { shape: { dim: 8 dim: 192 dim: 28 dim: 28 } shape: { dim: 8 } } }\n'
    + conv("3a/1x1", "data", 64, 1)
    + conv("3a/3x3_reduce", "data", 96, 1) + conv("3a/3x3", "3a/3x3_reduce", 128, 3, pad=1)
    + conv("3a/5x5_reduce", "data", 16, 1) + conv("3a/5x5", "3a/5x5_reduce", 32, 5, pad=2)
    + conv("3a/proj", "data", 32, 1)
    + 'layer { name: "3a/output" type: "Concat" bottom: "3a/1x1" bottom: "3a/3x3" bottom: "3a/5x5"\n'
      '  bottom: "3a/proj" top: "3a/output" }\n'
      'layer { name: "probe" type: "Pooling" bottom: "3a/output" top: "probe" include { phase: TEST }\n'
      '  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
      'layer { name: "pool" type: "Pooling" bottom: "3a/output" top: "pool"\n'
      '  pooling_param { pool: AVE global_pooling: true } }\n'
      'layer { name: "classifier" type: "InnerProduct" bottom: "pool" top: "classifier"\n'
      '  inner_product_param { num_output: 10 } }\n'
      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "classifier" bottom: "label" top: "loss" }\n')

EXPECT_INCEPTION = {
    "3a/1x1": ((64, 28, 28), 12_352),           # 192*64 + 64
    "3a/3x3_reduce": ((96, 28, 28), 18_528),    # 192*96 + 96
    "3a/3x3": ((128, 28, 28), 110_720),         # (28 + 2 - 3) + 1 = 28; 96*9*128 + 128 = 110,592 + 128
    "3a/5x5_reduce": ((16, 28, 28), 3_088),     # 192*16 + 16
    "3a/5x5": ((32, 28, 28), 12_832),           # (28 + 4 - 5) + 1 = 28; 16*25*32 + 32 = 12,800 + 32
    "3a/proj": ((32, 28, 28), 6_176),           # 192*32 + 32
    "3a/output": ((256, 28, 28), 0),            # 64 + 128 + 32 + 32 channels
    "pool": ((256, 1, 1), 0),                   # global: kernel 28, stride 1: (28 - 28)/1 + 1
    "classifier": ((10,), 2_570),               # 256*10 + 10
    "loss": ((10,), 0),
}   # 12,352 + 18,528 + 110,720 + 3,088 + 12,832 + 6,176 = 163,696 (GoogLeNet's inception 3a) + 2,570


def test_inception_fragment_concat_in_place_relus_test_only_layer(tmp_path):
    result = convert_caffe(write(tmp_path, INCEPTION))
    got, net = shapes_and_params(result)
    assert got == EXPECT_INCEPTION
    assert net.num_params == 166_266 == sum(p for _, p in EXPECT_INCEPTION.values())
    out = yaml_layers(result)
    assert out["3a/output"]["inputs"] == ["3a/1x1", "3a/3x3", "3a/5x5", "3a/proj"]
    assert out["3a/3x3"]["inputs"] == ["3a/3x3_reduce"] and out["3a/1x1"]["inputs"] == ["data"]
    assert all(out[n]["neuron"] == "relu" for n in EXPECT_INCEPTION if n.startswith("3a/") and n != "3a/output")
    assert "probe" not in out and any("TEST-phase layers dropped: probe" in n for n in result.notices)
    assert out["pool"]["mode"] == "avg" and (out["pool"]["size"], out["pool"]["stride"]) == (28, 1)
    # xavier: uniform of variance 1/fan_in, as a Gaussian of that std: 1x1 on 192 maps -> sqrt(1/192)
    assert out["3a/1x1"]["init_w"] == pytest.approx(192 ** -0.5) and out["3a/1x1"]["init_b"] == 0.2
    assert out["3a/3x3"]["init_w"] == pytest.approx((96 * 9) ** -0.5)
    assert any("xavier" in n for n in result.notices)
    assert parse_net(result.text).train == {"batch": 8}


def pool(name, bottom, mode, k, s, pad=0):
    padding = f" pad: {pad}" if pad else ""
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: {mode} kernel_size: {k} stride: {s}{padding} }} }}\n')


# GoogLeNet's pooling geometries (bvlc_googlenet: conv1/7x7_s2 pad 3 on 224, pool1..pool4 3x3/2,
# the inception branches' 3x3/1 pad 1, loss1/ave_pool 5x5/3, pool5/7x7_s1), fewer channels,
# and two padded pools that are not GoogLeNet's: AVE 3x3/2 pad 1, MAX 2x2/2 pad 1 (dropped window)
GOOGLENET_POOLS = (
    'name: "googlenet_pools"\n'
    'layer { name: "input" type: "Input" top: "data" top: "label"\n'
    '  input_param { shape: { dim: 2 dim: 3 dim: 224 dim: 224 } shape: { dim: 2 } } }\n'
    'layer { name: "conv1/7x7_s2" type: "Convolution" bottom: "data" top: "conv1/7x7_s2"\n'
    '  convolution_param { num_output: 8 kernel_size: 7 stride: 2 pad: 3\n'
    '    weight_filler { type: "xavier" std: 0.1 } bias_filler { type: "constant" value: 0.2 } } }\n'
    'layer { name: "conv1/relu_7x7" type: "ReLU" bottom: "conv1/7x7_s2" top: "conv1/7x7_s2" }\n'
    + pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2)
    + pool("pool2/3x3_s2", "pool1/3x3_s2", "MAX", 3, 2)
    + pool("inception_3a/pool", "pool2/3x3_s2", "MAX", 3, 1, pad=1)
    + 'layer { name: "inception_3a/output" type: "Concat" bottom: "pool2/3x3_s2" bottom: "inception_3a/pool"\n'
      '  top: "inception_3a/output" }\n'
    + pool("pool3/3x3_s2", "inception_3a/output", "MAX", 3, 2)
    + pool("pool4/3x3_s2", "pool3/3x3_s2", "MAX", 3, 2)
    + pool("loss1/ave_pool", "pool3/3x3_s2", "AVE", 5, 3)
    + pool("pool5/7x7_s1", "pool4/3x3_s2", "AVE", 7, 1)
    + pool("ave_pad", "pool4/3x3_s2", "AVE", 3, 2, pad=1)
    + pool("max_pad", "pool4/3x3_s2", "MAX", 2, 2, pad=1)
    + 'layer { name: "join" type: "Concat" bottom: "loss1/ave_pool" bottom: "ave_pad" bottom: "max_pad"\n'
      '  top: "join" }\n'
      'layer { name: "loss1/classifier" type: "InnerProduct" bottom: "join" top: "loss1/classifier"\n'
      '  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }\n'
      'layer { name: "loss3/classifier" type: "InnerProduct" bottom: "pool5/7x7_s1" top: "loss3/classifier"\n'
      '  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }\n'
      'layer { name: "sum" type: "Eltwise" bottom: "loss1/classifier" bottom: "loss3/classifier" top: "sum" }\n'
      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" }\n')

EXPECT_GOOGLENET_POOLS = {
    "conv1/7x7_s2": ((8, 112, 112), 1_184),   # floor((224 + 6 - 7)/2) + 1 = 111 + 1; 3*49*8 + 8
    "pool1/3x3_s2": ((8, 56, 56), 0),          # ceil((112 - 3)/2) + 1 = 55 + 1
    "pool2/3x3_s2": ((8, 28, 28), 0),          # ceil((56 - 3)/2) + 1 = 27 + 1
    "inception_3a/pool": ((8, 28, 28), 0),     # ceil((28 + 2 - 3)/1) + 1 = 28; 27*1 >= 28 + 1? no
    "inception_3a/output": ((16, 28, 28), 0),
    "pool3/3x3_s2": ((16, 14, 14), 0),         # ceil((28 - 3)/2) + 1 = 13 + 1
    "pool4/3x3_s2": ((16, 7, 7), 0),           # ceil((14 - 3)/2) + 1 = 6 + 1
    "loss1/ave_pool": ((16, 4, 4), 0),         # ceil((14 - 5)/3) + 1 = 3 + 1
    "pool5/7x7_s1": ((16, 1, 1), 0),           # (7 - 7)/1 + 1
    "ave_pad": ((16, 4, 4), 0),                # ceil((7 + 2 - 3)/2) + 1 = 4; 3*2 = 6 >= 7 + 1? no
    "max_pad": ((16, 4, 4), 0),                # ceil((7 + 2 - 2)/2) + 1 = 5; 4*2 = 8 >= 7 + 1: 4
    "join": ((48, 4, 4), 0),
    "loss1/classifier": ((10,), 7_690),        # 48*4*4 = 768 inputs: 768*10 + 10
    "loss3/classifier": ((10,), 170),          # 16*10 + 10
    "sum": ((10,), 0),
    "loss": ((10,), 0),
}


def test_googlenet_padded_pools_convert(tmp_path):
    result = convert_caffe(write(tmp_path, GOOGLENET_POOLS))
    got, net = shapes_and_params(result)
    assert got == EXPECT_GOOGLENET_POOLS
    assert net.num_params == 9_044 == sum(p for _, p in EXPECT_GOOGLENET_POOLS.values())
    out = yaml_layers(result)
    assert (out["inception_3a/pool"]["padding"], out["inception_3a/pool"]["size"],
            out["inception_3a/pool"]["stride"]) == (1, 3, 1)
    assert out["ave_pad"]["mode"] == "avg" and out["ave_pad"]["padding"] == 1
    assert out["pool1/3x3_s2"]["padding"] == 0 and all(out[n]["ceil"] for n in out if out[n]["type"] == "pool")
    # the new keys only where needed: unpadded pools are written as before
    assert "padding" not in result.text.split("pool1/3x3_s2")[1].split("- name")[0]
    assert "ceil" not in result.text and "global" not in result.text


def caffe_pool(x, mode, k, s, pad, out):
    """Caffe's PoolingLayer::Forward_cpu (MAX, AVE) for one square plane per (n, c)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out, out), np.float64)
    for ph in range(out):
        for pw in range(out):
            hstart, wstart = ph * s - pad, pw * s - pad
            hend, wend = min(hstart + k, h + pad), min(wstart + k, w + pad)
            pool_size = (hend - hstart) * (wend - wstart)          # before clipping to the image
            hs, ws, he, we = max(hstart, 0), max(wstart, 0), min(hend, h), min(wend, w)
            window = x[:, :, hs:he, ws:we]
            y[:, :, ph, pw] = window.max(axis=(2, 3)) if mode == "MAX" else window.sum(axis=(2, 3)) / pool_size
    return y


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("side, k, s, pad, out", [
    (6, 3, 2, 1, 4),     # ceil((6 + 2 - 3)/2) + 1 = 4; 3*2 = 6 >= 7? no: the last window [5, 8) runs past
                         # the padding: Caffe's AVE divides by its 2 rows in it (5 and the pad row 6), not 3
    (5, 2, 2, 1, 3),     # ceil((5 + 2 - 2)/2) + 1 = 4; 3*2 = 6 >= 5 + 1: dropped, 3
    (7, 3, 2, 1, 4),     # ResNet-style 3x3/2 pad 1: ceil(6/2) + 1 = 4
    (6, 3, 1, 1, 6),     # GoogLeNet's inception pool: the same size
    (7, 3, 2, 0, 3),     # no padding: ceil(4/2) + 1 = 3
])
def test_padded_pool_computes_what_caffe_computes(tmp_path, mode, side, k, s, pad, out):
    text = ('input: "data" input_shape { dim: 2 dim: 3 dim: %d dim: %d }\n' % (side, side)
            + pool("pool", "data", mode, k, s, pad)
            + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 2 } }\n'
              'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
    result = convert_caffe(write(tmp_path, text))
    spec = next(sp for sp in parse_net(result.text).layers if sp.name == "pool")
    layer = layers.get("pool")("pool", spec.cfg, [(3, side, side)])
    assert layer.output_shape == (3, out, out)
    x = np.random.default_rng(side + pad).standard_normal((2, 3, side, side)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x, {}), caffe_pool(x, mode, k, s, pad, out), rtol=1e-5, atol=1e-6)


def test_pooling_refusals_and_global_pooling(tmp_path):
    base = ('input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 8 }\n%s'
            'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 2 } }\n'
            'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
    # AVE over a 6x8 plane: our `global: true` (square planes keep size/stride, as before)
    result = convert_caffe(write(tmp_path, base % 'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
                                                  '  pooling_param { pool: AVE global_pooling: true } }\n'))
    out = yaml_layers(result)
    assert out["pool"]["global"] is True and out["pool"]["size"] is None and out["fc"]["inputs"] == ["pool"]
    assert shapes_and_params(result)[0]["pool"] == ((3, 1, 1), 0)
    cases = [('pool: MAX global_pooling: true', "pooling_param.global_pooling", "our `global: true` averages"),
             ('pool: MAX kernel_size: 3 stride: 1 pad: 2', "pooling_param.pad", "at most half the window (1"),
             ('pool: MAX kernel_size: 2 stride: 3', "pooling_param.stride", "skip input")]
    for params, key, message in cases:
        text = base % ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
                       f'  pooling_param {{ {params} }} }}\n')
        e = error(tmp_path, text)
        assert (e.layer, e.key, e.line) == ("pool", key, 3) and message in e.message, str(e)
        assert len(str(e).splitlines()) == 1
    # FLOOR (newer Caffe's round_mode): our `ceil: false` where the rules differ: floor((6 - 3)/2) + 1 = 2,
    # ceil's 3; floor((8 - 3)/2) + 1 = 3
    text = base % ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
                   '  pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }\n')
    result = convert_caffe(write(tmp_path, text))
    assert yaml_layers(result)["pool"]["ceil"] is False
    assert shapes_and_params(result)[0]["pool"] == ((3, 2, 3), 0)


# ---- a tiny net trains -------------------------------------------------------------------------
TINY = """\
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }      # ceil((8 - 3)/2) + 1 = 4
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 } }
layer { name: "fc1" type: "InnerProduct" bottom: "norm1" top: "fc1"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""

TINY_SOLVER = """\
base_lr: 0.1 momentum: 0.9 weight_decay: 0.001
lr_policy: "multistep" gamma: 0.5 stepvalue: 300 stepvalue: 600
max_iter: 1000   # --epochs 10: 100 iterations an epoch
"""


def test_tiny_net_loads_and_trains_a_step(tmp_path):
    result = convert_caffe(write(tmp_path, TINY), solver=write(tmp_path, TINY_SOLVER, "solver.prototxt"),
                           epochs=10)
    got, net = shapes_and_params(result)
    assert got == {"conv1": ((4, 8, 8), 112),      # (8 + 2 - 3) + 1 = 8; 3*9*4 + 4
                   "pool1": ((4, 4, 4), 0), "norm1": ((4, 4, 4), 0),
                   "fc1": ((5,), 325),              # 4*4*4 = 64 inputs: 64*5 + 5
                   "prob": ((5,), 0)}
    train = parse_net(result.text).train
    assert train["epochs"] == 10 and train["schedule"] == {"type": "step", "epochs": [3, 6], "factor": 0.5}
    assert (train["lr"], train["momentum"], train["weight_decay"], train["batch"]) == (0.1, 0.9, 0.001, 2)
    assert yaml_layers(result)["norm1"]["alpha"] == 0.5 and yaml_layers(result)["norm1"]["k"] == 1.0
    s = settings.resolve(train)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = {k: v.copy() for k, v in net.parameters().items()}
    loss, grads = net.loss_and_grads(x, np.array([1, 3]), train=True)
    SGD.for_net(net, s["momentum"], s["weight_decay"]).step({k: g.copy() for k, g in grads.items()}, s["lr"])
    assert np.isfinite(loss)
    after = net.parameters()
    assert set(before) == {"conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"}
    assert all(not np.array_equal(before[k], after[k]) for k in before)


# ---- mappings -----------------------------------------------------------------------------------
def test_other_layer_mappings(tmp_path):
    text = TINY.replace('lrn_param { local_size: 3 alpha: 0.5 }',
                        'lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL }')
    text = text.replace('layer { name: "prob"', """\
layer { name: "fc2" type: "InnerProduct" bottom: "norm1" top: "fc2" inner_product_param { num_output: 5 } }
layer { name: "sum" type: "Eltwise" bottom: "fc1" bottom: "fc2" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "act" type: "TanH" bottom: "sum" top: "act" }
layer { name: "drop" type: "Dropout" bottom: "act" top: "act" dropout_param { dropout_ratio: 0.25 scale_train: false } }
layer { name: "prob\"""").replace('bottom: "fc1" top: "prob"', 'bottom: "act" top: "prob"')
    result = convert_caffe(write(tmp_path, text))
    out = yaml_layers(result)
    assert out["norm1"]["type"] == "rnorm" and (out["norm1"]["size"], out["norm1"]["k"]) == (3, 1.0)
    assert out["sum"]["type"] == "eltsum" and out["sum"]["coeffs"] == [1.0, -0.5]
    # not in place: a neuron layer of its own; classic dropout (no scaling in training) is dropout2
    assert out["act"]["type"] == "neuron" and out["act"]["fn"] == "tanh" and out["act"]["inputs"] == ["sum"]
    assert out["drop"]["type"] == "dropout2" and out["drop"]["keep"] == 0.75
    assert out["prob"]["inputs"] == ["drop"]
    assert any("no weight_filler" in n and "fc2" in n for n in result.notices)
    # MAX eltwise, and bias_term: false (a frozen zero bias, counted)
    text2 = text.replace("operation: SUM coeff: 1 coeff: -0.5", "operation: MAX").replace(
        "inner_product_param { num_output: 5 } }", "inner_product_param { num_output: 5 bias_term: false } }")
    result = convert_caffe(write(tmp_path, text2))
    out = yaml_layers(result)
    assert out["sum"]["type"] == "eltmax" and out["fc2"]["lr_b"] == 0.0
    assert any("bias_term: false on fc2" in n for n in result.notices)
    # conv1 112 + fc1 325 + fc2 64*5 + 5 = 325: 762 ours; Caffe's fc2 has no 5 biases: 757
    assert "762 parameters (757 in Caffe)" in result.text and result.num_params == 762


# ---- ResNet's BatchNorm + Scale, PReLU, ELU, leaky ReLU, msra ------------------------------------
RESNET = """\
name: "resnet_block"
input: "data"
input_shape { dim: 4 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }
  batch_norm_param { use_global_stats: false } }
layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1"
  param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 2 decay_mult: 0 }
  scale_param { bias_term: true } }
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "res2a_branch2a" type: "Convolution" bottom: "pool1" top: "res2a_branch2a"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 bias_term: false
    weight_filler { type: "msra" variance_norm: AVERAGE } } }
layer { name: "bn2a_branch2a" type: "BatchNorm" bottom: "res2a_branch2a" top: "bn2a_branch2a"
  batch_norm_param { eps: 0.001 moving_average_fraction: 0.9 } }
layer { name: "res2a" type: "Eltwise" bottom: "pool1" bottom: "bn2a_branch2a" top: "res2a" }
layer { name: "res2a_relu" type: "ReLU" bottom: "res2a" top: "res2a" relu_param { negative_slope: 0.1 } }
layer { name: "fc" type: "InnerProduct" bottom: "res2a" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "fc_elu" type: "ELU" bottom: "fc" top: "fc" elu_param { alpha: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2"
  inner_product_param { num_output: 5 weight_filler { type: "msra" variance_norm: FAN_OUT } } }
layer { name: "prelu" type: "PReLU" bottom: "fc2" top: "fc2" param { lr_mult: 1 decay_mult: 0 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""

EXPECT_RESNET = {   # ours; Caffe's learned parameters in the comments
    "conv1": ((4, 8, 8), 112),             # 3*9*4 = 108 weights + our 4 frozen zero biases
    "bn_conv1": ((4, 8, 8), 8),            # Scale's 4 factors and 4 biases (BatchNorm's blobs: state)
    "pool1": ((4, 4, 4), 0),               # ceil((8 - 3)/2) + 1 = 4
    "res2a_branch2a": ((4, 4, 4), 76),     # 4/2*9*4 = 72 weights + 4 frozen biases
    "bn2a_branch2a": ((4, 4, 4), 8),       # no Scale: Caffe learns none; ours 4 + 4 frozen at 1 and 0
    "res2a": ((4, 4, 4), 0),               # the in-place ReLU after it: its neuron
    "fc": ((5,), 325),                     # 64*5 + 5
    "fc2": ((5,), 30),                     # 5*5 + 5
    "prelu": ((5,), 5),                    # one slope per channel
    "prob": ((5,), 0),
}   # ours 564; Caffe 108 + 8 + 72 + 0 + 325 + 30 + 5 = 548


def test_resnet_batchnorm_scale_prelu_elu_leaky_msra_convert_and_train(tmp_path):
    result = convert_caffe(write(tmp_path, RESNET))
    got, net = shapes_and_params(result)
    assert got == EXPECT_RESNET and net.num_params == 564 == sum(p for _, p in EXPECT_RESNET.values())
    assert "564 parameters (548 in Caffe)" in result.text
    out = yaml_layers(result)
    bn = out["bn_conv1"]
    # moving_average_fraction 0.999 -> momentum 0.001; eps Caffe's default 1e-5 = ours; the Scale's
    # params give lr_w, lr_b, wd; the in-place ReLU after the Scale is the batchnorm's neuron
    assert (bn["type"], bn["momentum"], bn["eps"], bn["neuron"]) == ("batchnorm", 0.001, 1e-5, "relu")
    assert (bn["lr_w"], bn["lr_b"], bn["wd"]) == (1.0, 2.0, 0.0) and bn["inputs"] == ["conv1"]
    bn2 = out["bn2a_branch2a"]
    assert (bn2["momentum"], bn2["eps"], bn2["lr_w"], bn2["lr_b"]) == (0.1, 0.001, 0.0, 0.0)
    assert "scale_conv1" not in out and out["pool1"]["inputs"] == ["bn_conv1"]
    assert out["res2a"]["inputs"] == ["pool1", "bn2a_branch2a"]
    assert out["res2a"]["neuron"] == "leaky[0.1]" and out["fc"]["inputs"] == ["res2a"]
    assert "res2a_relu" not in out and any("res2a_relu (ReLU)" in n for n in result.notices)
    assert out["fc"]["neuron"] == "elu[0.5]"
    assert out["prelu"]["type"] == "prelu" and out["prelu"]["init_slope"] == 0.25 and out["prelu"]["wd"] == 0.0
    assert out["prelu"]["shared"] is False and out["prob"]["inputs"] == ["prelu"]
    # msra: N(0, 2/n). conv1 FAN_IN n = 3*9 = 27; res2a_branch2a AVERAGE n = (fan_in 2*9 + fan_out 4*9)/2 = 27
    # (Caffe's fan_out = count / shape(1) = 4*9); fc2 FAN_OUT n = 5. xavier: uniform of variance 1/n: n = 64
    assert (out["conv1"]["init"], out["conv1"]["fan"], out["conv1"]["nonlinearity"]) == ("kaiming", "in", "relu")
    assert (out["res2a_branch2a"]["init"], out["fc2"]["init"], out["fc2"]["fan"]) == ("xavier", "kaiming", "out")
    stds = {n.name: n.layer.weight_std() for n in net.layers if n.name in ("conv1", "res2a_branch2a", "fc2", "fc")}
    assert stds == pytest.approx({"conv1": (2 / 27) ** 0.5, "res2a_branch2a": (2 / 27) ** 0.5,
                                  "fc2": (2 / 5) ** 0.5, "fc": 64 ** -0.5}, rel=1e-12)
    notes = " ".join(result.notices)
    assert "Scale layers folded" in notes and "scale_conv1 -> bn_conv1" in notes
    assert "BatchNorm without a Scale (or a Scale without bias_term) on bn2a_branch2a" in notes
    assert "xavier (uniform): a Gaussian of the same variance" in notes
    # a training step: the frozen batchnorm stays 1 and 0, the others learn; the running statistics move
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    before = {k: v.copy() for k, v in net.parameters().items()}
    loss, grads = net.loss_and_grads(x, np.array([0, 1, 2, 3]), train=True)
    SGD.for_net(net, 0.9, 0.0005).step({k: g.copy() for k, g in grads.items()}, 0.1)
    after = net.parameters()
    assert np.isfinite(loss)
    frozen = {"bn2a_branch2a.weight", "bn2a_branch2a.bias", "conv1.bias", "res2a_branch2a.bias"}
    assert all(np.array_equal(before[k], after[k]) == (k in frozen) for k in before), \
        [k for k in before if np.array_equal(before[k], after[k]) != (k in frozen)]
    state = net.state_dict()
    assert np.any(state["bn_conv1.running_mean"] != 0) and np.any(state["bn2a_branch2a.running_var"] != 1)


@pytest.mark.parametrize("old, new, layer, key, message", [
    ('type: "BatchNorm" bottom: "conv1" top: "conv1"\n  param { lr_mult: 0 } param { lr_mult: 0 } param { '
     'lr_mult: 0 }\n  batch_norm_param { use_global_stats: false } }', 'type: "TanH" bottom: "conv1" top: "conv1" }',
     "scale_conv1", "type", "only right after a BatchNorm"),
    ("negative_slope: 0.1", "negative_slope: -0.1", "res2a_relu", "relu_param.negative_slope", "slope >= 0"),
    ("alpha: 0.5", "alpha: -1", "fc_elu", "elu_param.alpha", "a > 0"),
    ("moving_average_fraction: 0.9", "moving_average_fraction: 1", "bn2a_branch2a",
     "batch_norm_param.moving_average_fraction", "exponential average"),
    ("scale_param { bias_term: true }", "scale_param { bias_term: true axis: 2 }", "scale_conv1",
     "scale_param.axis", "one factor per channel"),
    ('layer { name: "res2a" ', 'layer { name: "sc" type: "Scale" bottom: "bn2a_branch2a" top: "sc" }\n'
     'layer { name: "res2a" ', "res2a", "bottom", "which our batchnorm 'bn2a_branch2a' includes"),   # not in place
])
def test_batchnorm_scale_and_neuron_refusals(tmp_path, old, new, layer, key, message):
    text = RESNET.replace(old, new, 1)
    assert text != RESNET
    e = error(tmp_path, text)
    assert (e.layer, e.key) == (layer, key) and message in e.message, str(e)
    assert e.line == line_of(text, f'name: "{layer}"' if key in ("type", "bottom") else new.split("{")[-1].strip()
                             if "{" in new else new)
    assert len(str(e).splitlines()) == 1


# ---- errors -------------------------------------------------------------------------------------
def test_unsupported_type_names_file_line_layer_and_type(tmp_path):
    text = TINY.replace('layer { name: "fc1"', 'layer { name: "mvn1" type: "MVN" bottom: "norm1" '
                                               'top: "norm1" }\nlayer { name: "fc1"')
    e = error(tmp_path, text)
    assert (e.layer, e.key, e.line) == ("mvn1", "type", line_of(text, '"MVN"'))
    assert str(e).startswith(f"{tmp_path / 'net.prototxt'}:{e.line}: layer 'mvn1', key 'type': ")
    assert "'MVN' (mean-variance normalisation) layer has no equivalent" in e.message
    e = error(tmp_path, TINY.replace('"Softmax"', '"Sofmax"'))
    assert e.layer == "prob" and "unknown Caffe layer type 'Sofmax'" in e.message


@pytest.mark.parametrize("bad, needle, message", [
    ('convolution_param { num_output: 4 kernel_size: 3 pad: 1\n',
     'convolution_param { num_output: 4 kernel_size: 3 pad: 1 {\n', "expected a field name"),
    ('layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }',
     'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" ', "never closed"),
    ('top: "pool1"\n', 'top: "pool1\n', "no closing quote"),
    ('lrn_param { local_size: 3 alpha: 0.5 }', 'lrn_param { local_size: 3 alpha: }', "expected a value"),
    ('num_output: 5', 'num_output 5', "expected ':'"),
    ('layer { name: "prob"', '} layer { name: "prob"', "no message is open"),
])
def test_malformed_text_gives_one_error_with_its_line(tmp_path, bad, needle, message):
    text = TINY.replace(bad, needle, 1)
    assert text != TINY
    e = error(tmp_path, text)
    line = needle.strip().splitlines()[0]
    assert message in e.message and e.line == line_of(text, line), str(e)
    assert len(str(e).splitlines()) == 1


@pytest.mark.parametrize("old, new, layer, key, message", [
    ("kernel_size: 3 pad: 1", "kernel_h: 3 kernel_w: 1 pad: 1", "conv1", "convolution_param.kernel_h", "square"),
    ("kernel_size: 3 pad: 1", "kernel_size: 3 pad: 1 dilation: 2", "conv1", "convolution_param.dilation",
     "dilated"),
    ("pool: MAX kernel_size: 3 stride: 2", "pool: MAX kernel_size: 2 stride: 3", "pool1", "pooling_param.stride",
     "skip input"),
    ("pool: MAX kernel_size: 3 stride: 2", "pool: STOCHASTIC kernel_size: 3 stride: 2", "pool1",
     "pooling_param.pool", "STOCHASTIC"),
    ("local_size: 3", "local_size: 4", "norm1", "lrn_param.local_size", "odd"),
    ("num_output: 5 weight", "num_output: 5 wieght_filler { } weight", "fc1", "inner_product_param.wieght_filler",
     "not a field"),
    ('top: "prob" }', 'top: "prob" softmax_param { axis: 2 } }', "prob", "softmax_param.axis", "axis 1"),
    ('bottom: "norm1" top: "fc1"', 'bottom: "norm2" top: "fc1"', "fc1", "bottom", "not the top of any"),
])
def test_what_cannot_be_expressed_exactly_is_refused(tmp_path, old, new, layer, key, message):
    text = TINY.replace(old, new, 1)
    assert text != TINY
    e = error(tmp_path, text)
    assert (e.layer, e.key) == (layer, key) and message in e.message, str(e)
    assert e.line == line_of(text, new)


def test_eltwise_prod_and_solver_errors(tmp_path):
    text = TINY.replace('layer { name: "prob"', """\
layer { name: "fc2" type: "InnerProduct" bottom: "norm1" top: "fc2" inner_product_param { num_output: 5 } }
layer { name: "prod" type: "Eltwise" bottom: "fc1" bottom: "fc2" top: "prod" eltwise_param { operation: PROD } }
layer { name: "prob\"""").replace('bottom: "fc1" top: "prob"', 'bottom: "prod" top: "prob"')
    e = error(tmp_path, text)
    assert (e.layer, e.key, e.line) == ("prod", "eltwise_param.operation", line_of(text, "PROD"))
    solver = write(tmp_path, TINY_SOLVER, "solver.prototxt")
    e = error(tmp_path, TINY, solver=solver)          # iterations, but no --epochs nor --train-images
    assert e.file == str(solver) and e.key == "max_iter" and e.line == 3 and "--train-images" in e.message
    solver = write(tmp_path, TINY_SOLVER.replace('"multistep"', '"poly"'), "solver.prototxt")
    e = error(tmp_path, TINY, solver=solver, epochs=10)
    assert e.key == "lr_policy" and e.line == 2 and "'poly'" in e.message


def test_prototxt_reader():
    m = prototxt.parse("# comment\nname: 'a' \"b\"  # joined\nshape < dim: [1, 2, 0x10] >; flag: true\n"
                       "inner: { x: -1.5e-3 y: inf e: ENUM }\n", file="f")
    assert m.get("name", "str") == "ab" and m.message("shape").get_all("dim", "int") == [1, 2, 16]
    assert m.get("flag", "bool") is True
    inner = m.message("inner")
    assert inner.get("x", "float") == -1.5e-3 and inner.get("y", "float") == float("inf")
    assert inner.get("e", "enum") == "ENUM" and inner.line == 4
    with pytest.raises(ConvertError, match="must be an integer, got 1.5"):
        prototxt.parse("a: 1.5").get("a", "int")
    with pytest.raises(ConvertError, match=r"f:1: .*given 2 times"):
        prototxt.parse("a: 1 a: 2", file="f").get("a", "int")


# ---- the command line ----------------------------------------------------------------------------
def test_cli_converts_a_prototxt_and_exits_2_on_errors(tmp_path):
    net = write(tmp_path, TINY)
    out = tmp_path / "tiny.yaml"
    p = subprocess.run([sys.executable, "-m", "engine", "convert", str(net), "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "762 parameters" not in p.stdout and "437 parameters (as in Caffe)" in p.stdout
    assert engine.load(str(out)).num_params == 437        # conv1 112 + fc1 325
    assert cli.main(["convert", str(net), "-o", str(out)]) == 2                    # exists
    assert cli.main(["convert", str(net), "-o", str(out), "--force", "--input", "3,16,16"]) == 0
    assert engine.load(str(out)).input_shape == (3, 16, 16)
    bad = write(tmp_path, TINY.replace('"ReLU"', '"BNLL"'), "bad.prototxt")
    p = subprocess.run([sys.executable, "-m", "engine", "convert", str(bad), "-o", str(tmp_path / "x.yaml")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:{line_of(TINY, 'relu1')}: layer 'relu1', key 'type'")
    assert not (tmp_path / "x.yaml").exists()
    for args in (["--solver", str(net)], ["--train-images", "5"]):    # Caffe flags with .cfg files
        assert cli.main(["convert", "a.cfg", "b.cfg", "-o", str(tmp_path / "y.yaml"), *args]) == 2
    assert cli.main(["convert", "a.cfg", "-o", str(tmp_path / "y.yaml")]) == 2
    assert cli.main(["convert", str(net), "-o", str(tmp_path / "y.yaml"), "--input", "3,8"]) == 2
