"""leaky[a], elu[a] and selu: the neuron layer and the activation fused on conv, fc and pool,
against the NumPy reference, central differences and PyTorch (F.leaky_relu, F.elu, F.selu);
their defaults, parameter checks and net-file syntax."""
import numpy as np
import pytest
from helpers import fused_params, neuron_inputs as inputs

import engine
import layers
from engine import gradcheck
from layers.conv import reference as conv_ref
from layers.fc import reference as fc_ref
from layers.neuron import reference, spec
from layers.pool import reference as pool_ref

FNS = ["leaky", "leaky[0.2]", "leaky[0]", "elu", "elu[0.5]", "selu"]


def make(fn, shape=(3, 5, 7)):
    return layers.get("neuron")("act", {"fn": fn}, [shape])


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("n", [1, 4])
def test_forward_backward_match_reference(fn, n):
    x = inputs(fn, (n, 3, 5, 7), seed=n)
    layer = make(fn)
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, reference.forward(fn, x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(n).standard_normal(x.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(fn, g, x.astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", FNS)
def test_gradient_finite_differences(fn):
    gradcheck.check(make(fn), [inputs(fn, (2, 3, 5, 7), seed=3)])


@pytest.mark.parametrize("fn", FNS)
def test_reference_gradient_float64(fn):
    x = inputs(fn, (60,), seed=5).astype(np.float64)
    g = np.random.default_rng(5).standard_normal(60)
    h = 1e-6
    num = (reference.forward(fn, x + h) - reference.forward(fn, x - h)) / (2 * h)
    np.testing.assert_allclose(reference.backward(fn, g, x), g * num, rtol=1e-6, atol=1e-8)


def torch_fn(F, fn):
    n = spec.parse(fn)
    return {"leaky": lambda t: F.leaky_relu(t, n.a), "elu": lambda t: F.elu(t, n.a),
            "selu": F.selu}[n.name]


@pytest.mark.parametrize("fn", FNS)
def test_matches_pytorch(fn):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    x = inputs(fn, (2, 3, 5, 7), seed=11) * np.float32(3)     # +-30: e^x saturates on the left
    g = np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)
    layer = make(fn)
    y = layer.forward(x, {}).copy()
    dx, _ = layer.backward(g, {})
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = torch_fn(torch.nn.functional, fn)(tx)
    ty.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_defaults_and_constants_are_pytorchs():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    assert spec.parse("leaky").a == np.float32(torch.nn.LeakyReLU().negative_slope)
    assert spec.parse("elu").a == torch.nn.ELU().alpha
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    scale = torch.nn.functional.selu(x)[1].item()
    alpha = torch.nn.functional.selu(x)[0].item() / scale / np.expm1(-1.0)
    assert spec.SELU_SCALE == pytest.approx(scale, rel=1e-7)
    assert spec.SELU_ALPHA == pytest.approx(alpha, rel=1e-7)


# ---- fused on conv, fc and pool -------------------------------------------------------------
@pytest.mark.parametrize("fn", FNS)
def test_conv_fused_matches_reference(fn):
    layer = layers.get("conv")("c", dict(filters=4, size=3, padding=1, groups=2, neuron=fn), [(2, 5, 6)])
    p = fused_params(layer, fn, 1)
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 6)).astype(np.float32)
    w, b = p["weight"].astype(np.float64), p["bias"].astype(np.float64)
    y = layer.forward(x, p)
    np.testing.assert_allclose(y, conv_ref.forward(x.astype(np.float64), w, b, 1, 1, 2, fn),
                               rtol=1e-4, atol=1e-5)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, p)
    dx_ref, dw_ref, db_ref = conv_ref.backward(dy, x.astype(np.float64), w, b, 1, 1, 2, fn)
    for got, want in ((dx, dx_ref), (grads["weight"], dw_ref), (grads["bias"], db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fn", FNS)
def test_fc_fused_matches_reference_and_finite_differences(fn):
    layer = layers.get("fc")("f", dict(outputs=5, neuron=fn), [(7,)])
    p = fused_params(layer, fn, 4)
    x = np.random.default_rng(5).standard_normal((3, 7)).astype(np.float32)
    y = layer.forward(x, p)
    y_ref, a = fc_ref.forward(x.astype(np.float64), p["weight"], p["bias"], fn)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, p)
    dx_ref, dw_ref, db_ref = fc_ref.backward(dy, x, p["weight"], a, fn)
    for got, want in ((dx, dx_ref), (grads["weight"], dw_ref), (grads["bias"], db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    gradcheck.check(layer, [x], p)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("fn", FNS)
def test_pool_fused_matches_reference(mode, fn):
    shape = (3, 11, 8)
    x = np.random.default_rng(7).standard_normal((2,) + shape).astype(np.float32)
    layer = layers.get("pool")("p", {"mode": mode, "size": 3, "stride": 2, "neuron": fn}, [shape])
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, pool_ref.forward(x, mode, 3, 2, fn), rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    np.testing.assert_allclose(dx, pool_ref.backward(x, g, mode, 3, 2, fn), rtol=1e-5, atol=1e-6)


# ---- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,code,a", [("leaky", spec.LEAKY, np.float32(0.01)),
                                         ("leaky[0.2]", spec.LEAKY, np.float32(0.2)),
                                         ("elu", spec.ELU, 1.0), ("elu[ 0.5 ]", spec.ELU, 0.5),
                                         ("selu", spec.SELU, 0.0)])
def test_parse(text, code, a):
    n = spec.parse(text)
    assert (n.code, n.a) == (code, a)


@pytest.mark.parametrize("text,message", [
    ("leaky[-0.1]", "negative slope a must be >= 0"),
    ("elu[0]", "a must be > 0"),
    ("selu[1]", "selu takes no parameters"),
    ("leaky[1,2]", "leaky takes 1 parameter"),
    ("lekay", "did you mean 'leaky'?"),
])
def test_bad_names_say_why(text, message):
    with pytest.raises(ValueError) as e:
        spec.parse(text)
    assert message in str(e.value)


def test_bad_name_in_a_net_file_names_layer_and_key():
    text = """
input: {shape: [1, 6, 6]}
layers:
  - name: c1
    type: conv
    filters: 2
    size: 3
    neuron: %s
  - {name: f1, type: fc, outputs: 3, neuron: selu}
  - {name: prob, type: softmax}
"""
    net = engine.load(text % "leaky[0.1]")
    assert net.forward(np.ones((2, 1, 6, 6), np.float32)).shape == (2, 3)
    with pytest.raises(engine.ConfigError) as e:
        engine.load(text % "elu[-1]")
    assert e.value.key == "neuron" and e.value.layer == "c1"
    assert "a must be > 0" in str(e.value)


def test_onnx_export_and_torch_mirror():
    pytest.importorskip("onnx", reason="exporting needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the mirror needs it")
    from bench.torch_mirror import mirror
    from engine.tools import export_onnx
    net = engine.load({"input": {"shape": [2, 6, 6]}, "layers": [
        {"name": "c", "type": "conv", "filters": 3, "size": 3, "neuron": "leaky[0.2]", "init_w": 0.5},
        {"name": "e", "type": "neuron", "fn": "elu[0.7]"},
        {"name": "p", "type": "pool", "mode": "max", "size": 2, "neuron": "leaky"},
        {"name": "f", "type": "fc", "outputs": 4, "neuron": "selu", "init_w": 0.5},
        {"name": "prob", "type": "softmax"}]}, seed=3)
    names = [n.name for n in net.layers]
    model = export_onnx.to_onnx(net, outputs=names)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(0).standard_normal((2, 2, 6, 6)) * 3).astype(np.float32)
    theirs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    ours = net.forward(x, outputs=names)
    for name in names:
        assert (ours[name] < 0).any() or name == "prob"      # the negative branches are exercised
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with torch.no_grad():
        np.testing.assert_allclose(mirror(net)(torch.from_numpy(x)).numpy(), net.forward(x),
                                   rtol=1e-5, atol=1e-6)
