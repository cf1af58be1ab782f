"""prelu: the kernels against reference.py (per channel and shared, after a conv and after an
fc), finite differences, PyTorch's nn.PReLU as the oracle, the keys, and a net training it."""
import numpy as np
import pytest
from helpers import distinct

import engine
import layers
from engine import gradcheck
from engine.solver import SGD
from layers.prelu import reference

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install -e '.[torch]')")

SHAPES = [(3, 5, 7), (6,)]


def make(shape, **cfg):
    return layers.get("prelu")("pr", cfg, [shape])


def slopes(layer, seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": rng.uniform(-0.5, 1.5, layer.param_shapes()["weight"]).astype(np.float32)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("need_dx", [True, False])
def test_kernels_match_reference(shape, shared, need_dx):
    layer = make(shape, shared=shared)
    p = slopes(layer)
    x = distinct((4,) + shape)
    y = layer.forward(x, p)
    x3 = x.reshape(4, layer.channels, -1)
    np.testing.assert_allclose(y.reshape(x3.shape), reference.forward(x3, p["weight"]), rtol=1e-6, atol=1e-7)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, p, need_dx=need_dx)
    dx_r, dw_r = reference.backward(dy.reshape(x3.shape), x3, p["weight"])
    np.testing.assert_allclose(grads["weight"], dw_r, rtol=1e-5, atol=1e-5)
    if need_dx:
        np.testing.assert_allclose(dx.reshape(x3.shape), dx_r, rtol=1e-6, atol=1e-7)
    else:
        assert dx is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
def test_backward_matches_finite_differences(shape, shared):
    layer = make(shape, shared=shared)
    gradcheck.check(layer, [distinct((3,) + shape, seed=2)], slopes(layer, 3))


def test_init_and_parameter_shapes():
    assert np.all(make((3, 5, 7)).init_params(None)["weight"] == np.float32(0.25))
    assert make((3, 5, 7)).param_shapes() == {"weight": (3,)}
    assert make((6,), shared=True, init_slope=0.1).init_params(None)["weight"].tolist() == [np.float32(0.1)]


@needs_torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
def test_torch_prelu(shape, shared):
    layer = make(shape, shared=shared)
    p = slopes(layer, 5)
    module = torch.nn.PReLU(1 if shared else shape[0])
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(p["weight"]))
    x = distinct((5,) + shape, seed=6)
    dy = np.random.default_rng(7).standard_normal(x.shape).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = module(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.forward(x, p), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    dx, grads = layer.backward(dy, p)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads["weight"], module.weight.grad.numpy(), rtol=1e-5, atol=1e-5)


NET = """
name: prelu-net
input: {shape: [3, 8, 8]}
defaults: {init_w: 0.3}
layers:
  - {name: c1, type: conv, filters: 4, size: 3, padding: 1}
  - {name: a1, type: prelu}
  - {name: f2, type: fc, outputs: 5}
  - {name: a2, type: prelu, shared: true, init_slope: 0.1, lr_w: 0.5, wd: 0}
  - {name: prob, type: softmax}
"""


def test_a_net_learns_its_slopes_with_the_multipliers():
    net = engine.load(NET)
    assert net.parameters()["a2.weight"].shape == (1,)
    sgd = SGD.for_net(net, momentum=0.0, weight_decay=0.1)
    assert sgd.multipliers["a1.weight"] == (1.0, 1.0) and sgd.multipliers["a2.weight"] == (0.5, 0.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    before = net.state_dict()
    loss, grads = net.loss_and_grads(x, y)
    sgd.step(grads, lr=0.1)
    after = net.state_dict()
    np.testing.assert_allclose(after["a2.weight"], before["a2.weight"] - 0.05 * grads["a2.weight"], rtol=1e-6)
    np.testing.assert_allclose(after["a1.weight"], before["a1.weight"] * (1 - 0.1 * 0.1) - 0.1 * grads["a1.weight"],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text, key", [
    ("{name: b, type: prelu, shared: 1}", "shared"),
    ("{name: b, type: prelu, init_slope: fast}", "init_slope"),
    ("{name: b, type: prelu, lr_b: 2}", "lr_b"),
])
def test_bad_keys_are_config_errors(tmp_path, text, key):
    path = tmp_path / "net.yaml"
    path.write_text("name: t\ninput: {shape: [2, 4, 4]}\nlayers:\n"
                    f"  - {text}\n  - {{name: f, type: fc, outputs: 2}}\n  - {{name: s, type: softmax}}\n")
    with pytest.raises(engine.ConfigError) as e:
        engine.load(str(path))
    assert e.value.layer == "b" and e.value.key == key and e.value.line == 4


def test_onnx_export():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from engine.tools import export_onnx
    net = engine.load(NET)
    net.parameters()["a1.weight"][:] = [-0.5, 0.3, 1.2, 0.0]
    model = export_onnx.to_onnx(net, outputs=["a1", "a2"])
    export_onnx.check(model)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    ours = net.forward(x, outputs=["a1", "a2", "prob"])
    for name in ("a1", "a2", "prob"):
        np.testing.assert_allclose(got[name], ours[name], rtol=1e-5, atol=1e-6, err_msg=name)
