"""The shipped nets: AlexNet's size, and its two columns equal one column with groups."""
import copy
import os

import numpy as np
import pytest

import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = os.path.join(ROOT, "nets")


def one_column_alexnet():
    """nets/alexnet.yaml folded onto one column: halves joined, `groups: 2` where a column
    reads only itself (conv2, conv4, conv5, and the normalisations)."""
    norm = {"type": "cmrnorm", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2, "groups": 2}
    return {
        "name": "alexnet-one-column",
        "input": {"shape": [3, 224, 224]},
        "layers": [
            {"name": "conv1", "type": "conv", "filters": 96, "size": 11, "stride": 4, "padding": 2,
             "neuron": "relu"},
            dict(norm, name="norm1"),
            {"name": "pool1", "type": "pool", "mode": "max", "size": 3, "stride": 2},
            {"name": "conv2", "type": "conv", "filters": 256, "size": 5, "padding": 2, "groups": 2,
             "neuron": "relu"},
            dict(norm, name="norm2"),
            {"name": "pool2", "type": "pool", "mode": "max", "size": 3, "stride": 2},
            {"name": "conv3", "type": "conv", "filters": 384, "size": 3, "padding": 1, "neuron": "relu"},
            {"name": "conv4", "type": "conv", "filters": 384, "size": 3, "padding": 1, "groups": 2,
             "neuron": "relu"},
            {"name": "conv5", "type": "conv", "filters": 256, "size": 3, "padding": 1, "groups": 2,
             "neuron": "relu"},
            {"name": "pool5", "type": "pool", "mode": "max", "size": 3, "stride": 2},
            {"name": "fc6", "type": "fc", "outputs": 4096, "neuron": "relu"},
            {"name": "drop6", "type": "dropout", "rate": 0.5},
            {"name": "fc7", "type": "fc", "outputs": 4096, "neuron": "relu"},
            {"name": "drop7", "type": "dropout", "rate": 0.5},
            {"name": "fc8", "type": "fc", "outputs": 1000},
            {"name": "probs", "type": "softmax"},
        ],
    }


# one-column parameter = the two columns' halves stacked along the output axis
FOLDED = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def fold(two):
    one = {}
    for name in FOLDED:
        for p in ("weight", "bias"):
            one[f"{name}.{p}"] = np.concatenate([two[f"{name}a.{p}"], two[f"{name}b.{p}"]], axis=0)
    one["fc8.weight"], one["fc8.bias"] = two["fc8.weight"], two["fc8.bias"]
    return one


@pytest.fixture(scope="module")
def alexnet():
    return engine.load(os.path.join(NETS, "alexnet.yaml"), seed=3)


def test_alexnet_parameter_count(alexnet):
    assert alexnet.num_params == 60_965_224


def test_alexnet_shapes_and_columns(alexnet):
    shapes = {n.name: n.output_shape for n in alexnet.layers}
    assert shapes["conv1a"] == (48, 55, 55)
    assert shapes["pool1b"] == (48, 27, 27)
    assert shapes["pool2a"] == (128, 13, 13)
    assert shapes["conv3b"] == (192, 13, 13)
    assert shapes["pool5a"] == (128, 6, 6)
    assert shapes["fc8"] == (1000,)
    assert {n.gpu for n in alexnet.layers if n.name.endswith("b")} == {1}
    assert {n.gpu for n in alexnet.layers if n.name.endswith("a")} == {0}
    assert alexnet.layer("fc6a").inputs == ["pool5a", "pool5b"]


def test_caffenet_and_lenet_load():
    caffe = engine.load(os.path.join(NETS, "caffenet.yaml"))
    assert caffe.num_params == 60_965_224
    assert caffe.layer("pool5").output_shape == (256, 6, 6)
    lenet = engine.load(os.path.join(NETS, "lenet5.yaml"))
    assert lenet.layer("pool2").output_shape == (16, 5, 5)
    assert lenet.num_params == 61_706


def test_summary_table(alexnet):
    text = alexnet.summary()
    assert "60,965,224" in text
    for name in ("conv1a", "conv1b", "fc8", "probs"):
        assert name in text
    assert "48x55x55" in text


def test_same_seed_same_weights():
    a = engine.load(os.path.join(NETS, "lenet5.yaml"), seed=7).state_dict()
    b = engine.load(os.path.join(NETS, "lenet5.yaml"), seed=7).state_dict()
    c = engine.load(os.path.join(NETS, "lenet5.yaml"), seed=8).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    assert abs(a["fc3.weight"].std() - 0.05) < 0.005 and np.all(a["fc3.bias"] == 0)


def test_load_state_dict_errors():
    net = engine.load(os.path.join(NETS, "lenet5.yaml"))
    state = net.state_dict()
    bad = copy.deepcopy(state)
    del bad["conv1.bias"]
    with pytest.raises(KeyError, match="conv1.bias"):
        net.load_state_dict(bad)
    bad = copy.deepcopy(state)
    bad["fc3.weight"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"fc3.weight.*\[3, 4\].*\[120, 400\]"):
        net.load_state_dict(bad)
    state["fc5.bias"][:] = 1.5
    net.load_state_dict(state)
    assert np.all(net.state_dict()["fc5.bias"] == 1.5)


@pytest.mark.slow       # AlexNet forward and backward at full size, twice
def test_two_columns_equal_one_column_with_groups():
    alexnet = engine.load(os.path.join(NETS, "alexnet.yaml"), seed=3)
    one = engine.load(one_column_alexnet())
    assert one.num_params == alexnet.num_params
    # the same arithmetic in both, im2col + GEMM: the paths' rules differ between a column's
    # conv and a grouped one (conv2a/b run as Winograd F(2x2, 5x5), 1.6e-6 from the grouped
    # GEMM's conv2, and that moved one of pool2's maxima from a near-tie: 13% of dy's largest
    # at two cells, 2% of conv2's weight gradient); each path is held to the reference alone
    for node in alexnet.layers + one.layers:
        if node.layer.type == "conv":
            node.layer.use_path("gemm")
    two_state = alexnet.state_dict()
    rng = np.random.default_rng(0)
    # larger weights than the 0.01 init, so that every layer's signal matters to the output
    for k, v in two_state.items():
        fan_in = np.prod(v.shape[1:]) if v.ndim > 1 else 1
        two_state[k] = (rng.standard_normal(v.shape) * (1.4 / np.sqrt(fan_in)) if v.ndim > 1
                        else rng.uniform(-0.1, 0.1, v.shape)).astype(np.float32)
    alexnet.load_state_dict(two_state)
    one.load_state_dict(fold(two_state))

    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    labels = np.array([3, 917])
    acts_two = alexnet.forward(x, outputs=["pool2a", "pool2b", "conv5a", "conv5b", "probs"])
    acts_one = one.forward(x, outputs=["pool2", "conv5", "probs"])

    def close(a, b, tol=2e-4):
        scale = np.abs(b).max()
        assert scale > 0
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)

    close(np.concatenate([acts_two["pool2a"], acts_two["pool2b"]], 1), acts_one["pool2"])
    close(np.concatenate([acts_two["conv5a"], acts_two["conv5b"]], 1), acts_one["conv5"])
    close(acts_two["probs"], acts_one["probs"])
    assert acts_one["probs"].max() > 2 / 1000  # not a flat distribution: the test has teeth

    loss_two, g_two = alexnet.gradients(x, labels)
    loss_one, g_one = one.gradients(x, labels)
    assert abs(loss_two - loss_one) < 1e-4 * abs(loss_one)
    folded = fold(g_two)
    for k in g_one:
        close(folded[k], g_one[k], tol=1e-3)
