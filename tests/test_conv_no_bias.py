"""conv with `bias: false` (torchvision's convs before a batchnorm): no bias parameter at all.
Both CPU paths (GEMM and direct) = the NumPy reference (b=None) = PyTorch (conv2d bias=None),
finite differences, the parameter count and state_dict, the key's checks, a net that trains,
a checkpoint round trip, the ONNX export (Conv without B) and the torch mirror.
The CPU = CUDA comparison is tests/cuda/test_conv_no_bias_cuda.py."""
import numpy as np
import pytest
from helpers import check_filter_layer, close, filter_layer_case, filter_ref_args

import engine
import layers
from engine import gradcheck
from layers.conv import ConvLayer, reference

# (N, C, H, W, filters, size, stride, padding, groups, neuron, direct path?): odd, non-square
CASES = [
    (3, 6, 9, 7, 6, 3, 2, 1, 2, "abs", False),
    (2, 4, 7, 6, 4, 3, 1, 1, 2, "tanh", True),
    (1, 6, 8, 11, 9, 4, 3, 2, 3, "relu", False),
    (3, 3, 6, 5, 5, 2, 1, 0, 1, "logistic", True),
    (2, 2, 5, 5, 3, 5, 1, 2, 1, None, True),
    (2, 5, 6, 8, 40, 1, 1, 0, 1, None, False),      # 1x1, 40 filters: GEMM at stride 1
    (1, 4, 6, 7, 40, 3, 1, 1, 1, None, False),      # one image, no activation: the GEMM writes y
]
IDS = ["-".join(map(str, c)) for c in CASES]


def make(c, h, w, **cfg):
    return layers.get("conv")("conv", dict(cfg, bias=False), [(c, h, w)])


def setup_case(case, seed=0):
    n, c, h, w, f, k, s, p, g, fn, direct = case
    layer, params, x, rng = filter_layer_case("conv", n, c, h, w, seed, filters=f, size=k, stride=s, padding=p,
                                              groups=g, neuron=fn, init_w=0.3, bias=False)
    layer.use_path("direct" if direct else "gemm")     # the path its flag names, whatever the rule picks
    return layer, params, x, rng


def ref_args(layer, params):
    return filter_ref_args(layer, params)


def check_against_reference(layer, params, x, rng):
    check_filter_layer(layer, params, x, rng, reference)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernels_match_reference(case):
    layer, params, x, rng = setup_case(case)
    assert set(params) == {"weight"}
    check_against_reference(layer, params, x, rng)


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=[IDS[0], IDS[5]])
def test_gemm_path_over_several_chunks(case, monkeypatch):
    monkeypatch.setattr(ConvLayer, "CHUNK_BYTES", 1)        # one image per chunk
    layer, params, x, rng = setup_case(case, seed=5)
    assert layer._chunk(x.shape[0]) == 1
    check_against_reference(layer, params, x, rng)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4], CASES[5]], ids=lambda c: "-".join(map(str, c)))
def test_gradient_finite_differences(case):
    layer, params, x, _ = setup_case(case, seed=1)
    gradcheck.check(layer, [x], params)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_pytorch(case):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    layer, params, x, rng = setup_case(case, seed=4)
    n, c, h, w, f, k, s, p, g, fn, _ = case
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(params["weight"], dtype=torch.float64, requires_grad=True)
    act = {None: lambda a: a, "relu": torch.relu, "abs": torch.abs,
           "tanh": torch.tanh, "logistic": torch.sigmoid}[fn]
    yt = act(F.conv2d(xt, wt, None, stride=s, padding=p, groups=g))
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(grads["weight"], wt.grad.numpy())


@pytest.mark.parametrize("stride, path", [(1, "direct"), (2, "gemm"), (2, "mixed")])
def test_zero_biases_give_the_same_numbers_bit_for_bit(stride, path):
    """The biased layer with its biases at 0 computes the same float32 sums."""
    rng = np.random.default_rng(7)
    cfg = dict(filters=4, size=3, stride=stride, padding=1, groups=2, neuron="relu")
    with_bias = layers.get("conv")("conv", cfg, [(4, 7, 6)]).use_path(path)
    without = make(4, 7, 6, **cfg).use_path(path)
    wp = with_bias.init_params(rng)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(without.forward(x, {"weight": wp["weight"]}), with_bias.forward(x, wp))
    dy = rng.standard_normal((2,) + with_bias.output_shape).astype(np.float32)
    dxb, gb = with_bias.backward(dy, wp)
    dxn, gn = without.backward(dy, {"weight": wp["weight"]})
    np.testing.assert_array_equal(dxn, dxb)
    np.testing.assert_array_equal(gn["weight"], gb["weight"])


def test_parameter_shapes_and_default():
    layer = make(6, 9, 9, filters=4, size=3, stride=2, groups=2)
    assert layer.param_shapes() == {"weight": (4, 3, 3, 3)}
    default = layers.get("conv")("conv", dict(filters=4, size=3), [(6, 9, 9)])
    assert default.cfg["bias"] is True and default.param_shapes()["bias"] == (4,)


def test_declared_buffers_are_the_allocated_ones():
    for case in CASES[:2]:
        layer, params, x, rng = setup_case(case)
        y = layer.forward(x, params)
        layer.backward(rng.standard_normal(y.shape).astype(np.float32), params)
        declared = layer.buffer_shapes(x.shape[0], backward=True)
        assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
        assert not any(kind == "param_grad" and tag == "dbias" for tag, (kind, _) in declared.items())


NET = ("name: t\ninput: {shape: [3, 8, 8]}\nlayers:\n"
       "  - {name: c1, type: conv, filters: 4, size: 3, padding: 1, bias: false}\n"
       "  - {name: bn1, type: batchnorm, neuron: relu}\n"
       "  - {name: c2, type: conv, filters: 6, size: 3, stride: 2, bias: false, neuron: tanh}\n"
       "  - {name: f, type: fc, outputs: 5}\n  - {name: prob, type: softmax}\n")


def test_net_file_errors_name_the_line_and_key():
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET.replace("bias: false, neuron: tanh", "bias: 0, neuron: tanh"))
    assert (e.value.layer, e.value.key, e.value.line) == ("c2", "bias", 6)
    assert "true or false" in str(e.value)
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET.replace("bias: false, neuron: tanh", "bias: false, shared_biases: false"))
    assert (e.value.layer, e.value.key, e.value.line) == ("c2", "shared_biases", 6)
    assert "bias: false" in str(e.value)


def test_in_a_net_params_state_dict_training_and_checkpoint(tmp_path):
    net = engine.load(NET, seed=0)
    state = net.state_dict()
    assert "c1.bias" not in state and "c2.bias" not in state and "c1.weight" in state
    # c1: 3*9*4 = 108; bn1: 4 + 4; c2: 4*9*6 = 216; f: 6*9*5 + 5 = 275
    assert net.num_params == 108 + 8 + 216 + 275
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 3, 4])
    loss, grads = net.gradients(x, labels, train=True)
    assert np.isfinite(loss) and "c1.bias" not in grads and "c2.bias" not in grads
    from engine.solver import SGD
    sgd = SGD.for_net(net, 0.9, 0.0005)
    assert not any(k.startswith(("c1.bias", "c2.bias")) for k in sgd.multipliers)
    before = net.state_dict()["c1.weight"].copy()
    sgd.step({k: g.copy() for k, g in grads.items()}, 0.1)
    assert not np.array_equal(net.state_dict()["c1.weight"], before)


def test_checkpoint_round_trip_and_a_biased_state_dict_is_refused(tmp_path):
    from engine import checkpoint
    net = engine.load(NET, seed=0)
    checkpoint.save(str(tmp_path), "t", net.state_dict(), {})
    arrays, _ = checkpoint.load(str(tmp_path / "t.json"))
    assert "c1.bias" not in arrays
    other = engine.load(NET, seed=9)
    other.load_state_dict(arrays)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(x), net.forward(x))
    with pytest.raises(KeyError, match="unexpected c1.bias"):
        other.load_state_dict(dict(arrays, **{"c1.bias": np.zeros(4, np.float32)}))


def test_onnx_export_has_no_bias_input():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from engine.tools.export_onnx import check, to_onnx
    net = engine.load(NET, seed=3)
    model = to_onnx(net)
    check(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(len(n.input) == 2 for n in convs)
    assert not any("bias" in t.name and t.name.startswith(("c1", "c2")) for t in model.graph.initializer)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"data": x})[0], net.forward(x), rtol=1e-5, atol=1e-6)


def test_torch_mirror_matches():
    torch = pytest.importorskip("torch")
    from bench.torch_mirror import mirror
    net = engine.load(NET, seed=2)
    model = mirror(net).eval()
    names = {f"{n}.{p}" for n, part in zip(model.names, model.parts) for p, _ in part.named_parameters()}
    assert names == set(net.parameters())
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), net.forward(x), rtol=1e-4, atol=1e-6)
