"""Neuron functions (cuda-convnet's with their bracket parameters, and leaky[a], elu[a], selu):
the neuron layer and the activation fused on conv, fc and pool, against the NumPy reference,
central differences and PyTorch; the name parser and its messages; sqrt's and softrelu's edge
values; ONNX export and the PyTorch mirror of the newer ones."""
import numpy as np
import pytest
from helpers import NEURON_FNS as FNS, fused_params, neuron_inputs as inputs

import engine
import layers
from engine import gradcheck
from layers.conv import reference as conv_ref
from layers.fc import reference as fc_ref
from layers.neuron import reference, spec
from layers.pool import reference as pool_ref


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
    # the reference itself, in float64, against central differences
    rng = np.random.default_rng(5)
    x = inputs(fn, (50,), seed=5).astype(np.float64)
    g = rng.standard_normal(50)
    h = 1e-6
    num = (np.sum(g * reference.forward(fn, x + h)) - np.sum(g * reference.forward(fn, x - h))) / (2 * h)
    # a directional derivative along the all-ones direction
    assert abs(num - np.sum(reference.backward(fn, g, x))) < 1e-5 * max(1, abs(num))


def torch_fn(torch, fn):
    n = spec.parse(fn)
    a, b = n.a, n.b
    F = torch.nn.functional
    return {
        "ident": lambda t: t, "linear": lambda t: a * t + b if n.code == spec.LINEAR else t,
        "relu": torch.relu, "brelu": lambda t: torch.clamp(t, 0, a),
        "tanh": lambda t: a * torch.tanh(b * t), "logistic": torch.sigmoid,
        "softrelu": torch.nn.functional.softplus, "abs": torch.abs, "square": torch.square,
        "sqrt": torch.sqrt, "leaky": lambda t: F.leaky_relu(t, a), "elu": lambda t: F.elu(t, a),
        "selu": F.selu,
    }[n.name]


@pytest.mark.parametrize("fn", FNS)
def test_matches_pytorch(fn):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    x = inputs(fn, (2, 3, 5, 7), seed=11)
    g = np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)
    layer = make(fn)
    y = layer.forward(x, {}).copy()
    dx, _ = layer.backward(g, {})
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = torch_fn(torch, fn)(tx)
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


# ---- fused on conv, fc and pool ---------------------------------------------------------------
@pytest.mark.parametrize("fn", FNS)
def test_conv_fused_matches_reference(fn):
    layer = layers.get("conv")("c", dict(filters=4, size=3, padding=1, groups=2, neuron=fn), [(2, 5, 6)])
    p = fused_params(layer, fn, 1)
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 6)).astype(np.float32)
    w, b = p["weight"].astype(np.float64), p["bias"].astype(np.float64)
    y = layer.forward(x, p)
    y_ref = conv_ref.forward(x.astype(np.float64), w, b, 1, 1, 2, fn)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
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
    x = inputs(fn, (2,) + shape, seed=7)
    layer = layers.get("pool")("p", {"mode": mode, "size": 3, "stride": 2, "neuron": fn}, [shape])
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, pool_ref.forward(x, mode, 3, 2, fn), rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    np.testing.assert_allclose(dx, pool_ref.backward(x, g, mode, 3, 2, fn), rtol=1e-5, atol=1e-6)


def test_conv_square_keeps_its_pre_activation():
    # square's gradient needs x (its output loses the sign): the layer keeps "pre"
    layer = layers.get("conv")("c", dict(filters=2, size=3, neuron="square"), [(1, 4, 4)])
    assert "pre" in layer.buffer_shapes(2)
    p = fused_params(layer, "square", 0)
    layer.forward(np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32), p)
    assert "pre" in layer._buffers


# ---- edge values -----------------------------------------------------------------------------
def test_sqrt_of_a_negative_is_nan_and_its_slope_at_zero_infinite():
    # cuda-convnet's sqrtf: NaN below 0 (the trainer then stops naming the layer); g / (2y) at 0
    layer = make("sqrt", (4,))
    y = layer.forward(np.array([[-1.0, 0.0, 0.0, 4.0]], np.float32), {})
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 3] == 2
    dx, _ = layer.backward(np.array([[1.0, -1.0, 0.0, 1.0]], np.float32), {})
    assert np.isnan(dx[0, 0]) and dx[0, 1] == -np.inf and np.isnan(dx[0, 2]) and dx[0, 3] == 0.25
    fc = layers.get("fc")("f", dict(outputs=2, neuron="sqrt"), [(1,)])
    out = fc.forward(np.array([[1.0]], np.float32), {"weight": np.array([[-1.0], [1.0]], np.float32),
                                                     "bias": np.zeros(2, np.float32)})
    assert np.isnan(out[0, 0]) and out[0, 1] == 1


def test_softrelu_and_logistic_are_finite_at_large_inputs():
    x = np.array([[-100.0, -20.0, 0.0, 20.0, 100.0]], np.float32)
    for fn in ("softrelu", "logistic"):
        layer = make(fn, (5,))
        y = layer.forward(x, {}).copy()
        dx, _ = layer.backward(np.ones_like(x), {})
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
        # logistic's slope y (1 - y) from a float32 y = 1 is 0 where the exact one is 2e-9
        np.testing.assert_allclose(y, reference.forward(fn, x.astype(np.float64)), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(dx, reference.backward(fn, np.ones(5), x.astype(np.float64)),
                                   rtol=1e-5, atol=1e-8)


# ---- names and parameters --------------------------------------------------------------------
@pytest.mark.parametrize("text, name, code, a, b", [
    (None, "ident", spec.IDENT, 0, 0),
    ("ident", "ident", spec.IDENT, 0, 0),
    ("linear", "linear", spec.IDENT, 0, 0),            # linear[1,0] is the identity
    ("linear[1, 0]", "linear", spec.IDENT, 0, 0),
    ("linear[1e-3,-2]", "linear", spec.LINEAR, np.float32(1e-3), -2),
    (" relu ", "relu", spec.RELU, 0, 0),
    ("brelu[6]", "brelu", spec.BRELU, 6, 0),
    ("tanh", "tanh", spec.TANH, 1, 1),
    ("tanh[1.7159, 0.6667]", "tanh", spec.TANH, np.float32(1.7159), np.float32(0.6667)),
    ("softrelu", "softrelu", spec.SOFTRELU, 0, 0),
    ("sqrt", "sqrt", spec.SQRT, 0, 0),
    ("leaky", "leaky", spec.LEAKY, np.float32(0.01), 0),
    ("leaky[0.2]", "leaky", spec.LEAKY, np.float32(0.2), 0),
    ("elu", "elu", spec.ELU, 1, 0),
    ("elu[ 0.5 ]", "elu", spec.ELU, 0.5, 0),
    ("selu", "selu", spec.SELU, 0, 0),
])
def test_parse(text, name, code, a, b):
    n = spec.parse(text)
    assert (n.name, n.code, n.a, n.b) == (name, code, a, b)
    assert n.kernel_args() == (code, np.float32(a), np.float32(b))
    assert n.needs_input == (code in (spec.ABS, spec.SQUARE))


@pytest.mark.parametrize("value, message", [
    ("rleu", "unknown neuron 'rleu' (did you mean 'relu'?); valid: ident | linear[a,b] | relu"),
    ("softplus", "valid: ident"),
    ("tanh[1,x]", "'tanh[1,x]': parameter 2 must be a number, got 'x'"),
    ("tanh[1]", "'tanh[1]': tanh takes 2 parameters (tanh[a,b]), got 1"),
    ("linear[1,2,3]", "linear takes 2 parameters (linear[a,b]), got 3"),
    ("tanh[]", "got 0"),
    ("tanh[1,]", "parameter 2 must be a number, got ''"),
    ("brelu", "'brelu': brelu needs its parameter: brelu[a]"),
    ("relu[1]", "'relu[1]': relu takes no parameters"),
    ("tanh[1,2", "write parameters as name[p1,p2]"),
    ("tanh[1,2]]", "write parameters as name[p1,p2]"),
    ("tanh[inf,1]", "parameter 1 must be a finite number that fits a float32, got inf"),
    ("linear[1,1e39]", "parameter 2 must be a finite number that fits a float32"),
    ("tanh[0,1]", "a must not be 0"),
    ("tanh[1e-50,1]", "a must not be 0 in float32"),
    ("brelu[-1]", "the bound a must be > 0"),
    ("leaky[-0.1]", "negative slope a must be >= 0"),
    ("elu[0]", "a must be > 0"),
    ("selu[1]", "selu takes no parameters"),
    ("leaky[1,2]", "leaky takes 1 parameter"),
    ("lekay", "did you mean 'leaky'?"),
    (3, "must be a neuron name such as relu or tanh[1.7159,0.6667], got 3"),
    (None, "must be a neuron name"),
    (["tanh", 1, 2], "must be a neuron name"),
])
def test_bad_names_say_why(value, message):
    with pytest.raises(layers.LayerError) as e:
        layers.get("neuron").keys["fn"].check("fn", value)
    assert e.value.key == "fn" and message in e.value.message


NET = """\
input: {shape: [1, 6, 6]}
layers:
  - name: c1
    type: conv
    filters: 2
    size: 3
    neuron: %s
  - name: n1
    type: neuron
    fn: %s
  - name: f1
    type: fc
    outputs: 3
    neuron: tanh[1.7159,0.6667]
  - {name: prob, type: softmax}
"""


def test_bracket_syntax_in_net_files():
    # block-style YAML reads tanh[1.7159,0.6667] as a plain string, no quotes needed
    net = engine.load(NET % ("brelu[6]", "linear[2,0.5]"))
    act = {node.name: node.layer.act for node in net.layers if hasattr(node.layer, "act")}
    assert act["c1"] == spec.Neuron("brelu", spec.BRELU, 6.0, 0.0)
    assert act["n1"].kernel_args() == (spec.LINEAR, np.float32(2.0), np.float32(0.5))
    assert act["f1"].code == spec.TANH
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    assert net.forward(x).shape == (2, 3)


@pytest.mark.parametrize("conv, fn, key, message", [
    ("tanh[1,x]", "relu", "neuron", "'tanh[1,x]': parameter 2 must be a number"),
    ("relu", "brelu", "fn", "brelu needs its parameter"),
    ("relu", "tanhh[1,2]", "fn", "did you mean 'tanh'?"),
    ("elu[-1]", "leaky[0.1]", "neuron", "a must be > 0"),
])
def test_bad_names_in_net_files_name_layer_and_key(conv, fn, key, message):
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET % (conv, fn))
    assert e.value.key == key and e.value.layer == ("c1" if key == "neuron" else "n1")
    assert message in str(e.value)


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
