"""conv with `shared_biases: false` (cuda-convnet's sharedBiases=0): one bias per filter and
output position, bias [filters, OH, OW]. Both CPU paths (GEMM and direct) = the NumPy
reference = PyTorch (conv2d without bias + the bias tensor), finite differences, the
parameter count, the key's checks, a net that trains, the ONNX export and the torch mirror.
The CPU = CUDA comparison is tests/cuda/test_conv_unshared_biases_cuda.py."""
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
    (2, 9, 6, 8, 6, 2, 3, 1, 3, "square", False),
]
IDS = ["-".join(map(str, c)) for c in CASES]


def make(c, h, w, **cfg):
    return layers.get("conv")("conv", dict(cfg, shared_biases=False), [(c, h, w)])


def setup_case(case, seed=0):
    n, c, h, w, f, k, s, p, g, fn, direct = case
    layer, params, x, rng = filter_layer_case("conv", n, c, h, w, seed, filters=f, size=k, stride=s, padding=p,
                                              groups=g, neuron=fn, init_w=0.3, shared_biases=False)
    assert params["bias"].shape == (f,) + layer.out_hw
    layer.use_path("direct" if direct else "gemm")     # the path its flag names, whatever the rule picks
    return layer, params, x, rng


def ref_args(layer, params):
    return filter_ref_args(layer, params)


def check_against_reference(layer, params, x, rng):
    check_filter_layer(layer, params, x, rng, reference)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernels_match_reference(case):
    layer, params, x, rng = setup_case(case)
    assert params["bias"].shape == (layer.filters,) + layer.out_hw
    check_against_reference(layer, params, x, rng)


def test_gemm_path_over_several_chunks(monkeypatch):
    """The batch split into chunks: the per-position bias gradient sums over all of them."""
    monkeypatch.setattr(ConvLayer, "CHUNK_BYTES", 1)        # one image per chunk
    layer, params, x, rng = setup_case(CASES[0], seed=5)
    assert layer._chunk(x.shape[0]) == 1
    check_against_reference(layer, params, x, rng)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4], CASES[0]], ids=lambda c: "-".join(map(str, c)))
def test_gradient_finite_differences(case):       # abs (CASES[0]): inputs far from its kink
    layer, params, x, _ = setup_case(case, seed=1)
    if case[9] == "abs":
        params["bias"] += np.sign(params["bias"]) * 3.0
    gradcheck.check(layer, [x], params)


def test_reference_gradient_float64():
    layer, params, x, rng = setup_case(CASES[1], seed=2)
    x = x[:1].astype(np.float64)
    args = list(ref_args(layer, params))
    dy = rng.standard_normal((1,) + layer.output_shape)
    dx, dw, db = reference.backward(dy, x, *args)
    h = 1e-6
    for target, grad in ((x, dx), (args[0], dw), (args[1], db)):     # perturbed in place
        for flat in rng.choice(target.size, 12, replace=False):
            idx = np.unravel_index(flat, target.shape)
            old = target[idx]
            vals = []
            for step in (h, -h):
                target[idx] = old + step
                vals.append(np.sum(dy * reference.forward(x, *args)))
            target[idx] = old
            assert abs((vals[0] - vals[1]) / (2 * h) - grad[idx]) < 1e-6 * max(1.0, abs(grad[idx]))


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
    bt = torch.tensor(params["bias"], dtype=torch.float64, requires_grad=True)
    pre = F.conv2d(xt, wt, None, stride=s, padding=p, groups=g) + bt      # bt [F, OH, OW] broadcasts
    act = {None: lambda a: a, "relu": torch.relu, "abs": torch.abs, "square": lambda a: a * a,
           "tanh": torch.tanh, "logistic": torch.sigmoid}[fn]
    yt = act(pre)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(grads["weight"], wt.grad.numpy())
    close(grads["bias"], bt.grad.numpy())


@pytest.mark.parametrize("stride, path", [(1, "direct"), (2, "gemm"), (2, "mixed")])
def test_equal_biases_at_every_position_are_shared_biases(stride, path):
    """bias[f, :, :] = b[f] everywhere: the same float32 sums as the shared layer, bit for bit."""
    rng = np.random.default_rng(7)
    cfg = dict(filters=4, size=3, stride=stride, padding=1, groups=2, neuron="relu")
    shared = layers.get("conv")("conv", cfg, [(4, 7, 6)]).use_path(path)
    unshared = make(4, 7, 6, **cfg).use_path(path)
    sp = shared.init_params(rng)
    sp["bias"][:] = rng.standard_normal(4)
    up = {"weight": sp["weight"], "bias": np.repeat(sp["bias"][:, None], unshared.out_hw[0] * unshared.out_hw[1],
                                                    axis=1).reshape(unshared.param_shapes()["bias"])}
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(unshared.forward(x, up), shared.forward(x, sp))
    dy = rng.standard_normal((2,) + shared.output_shape).astype(np.float32)
    dxs, gs = shared.backward(dy, sp)
    dxu, gu = unshared.backward(dy, up)
    np.testing.assert_array_equal(dxu, dxs)
    np.testing.assert_array_equal(gu["weight"], gs["weight"])
    close(gu["bias"].sum(axis=(1, 2)), gs["bias"])


def test_parameter_count_shapes_and_default():
    # 6 channels, 2 groups, 4 filters of 3x3, stride 2 on 9x9: output 4x4
    layer = make(6, 9, 9, filters=4, size=3, stride=2, groups=2)
    assert layer.output_shape == (4, 4, 4)
    assert layer.param_shapes() == {"weight": (4, 3, 3, 3), "bias": (4, 4, 4)}
    # weights 4*3*3*3 = 108, biases 4 filters * 16 positions = 64
    assert sum(int(np.prod(s)) for s in layer.param_shapes().values()) == 108 + 64
    default = layers.get("conv")("conv", dict(filters=4, size=3, stride=2, groups=2), [(6, 9, 9)])
    assert default.cfg["shared_biases"] is True and default.param_shapes()["bias"] == (4,)
    assert layer.init_params(np.random.default_rng(0))["bias"].shape == (4, 4, 4)


def test_declared_buffers_are_the_allocated_ones():
    for case in CASES[:2]:          # GEMM with abs (keeps the pre-activation), direct with tanh
        layer, params, x, rng = setup_case(case)
        y = layer.forward(x, params)
        layer.backward(rng.standard_normal(y.shape).astype(np.float32), params)
        declared = layer.buffer_shapes(x.shape[0], backward=True)
        assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}


NET = ("name: t\ninput: {shape: [3, 8, 8]}\nlayers:\n"
       "  - {name: c1, type: conv, filters: 4, size: 3, padding: 1, shared_biases: false, neuron: relu}\n"
       "  - {name: c2, type: conv, filters: 6, size: 3, stride: 2, shared_biases: false, neuron: tanh}\n"
       "  - {name: f, type: fc, outputs: 5}\n  - {name: prob, type: softmax}\n")


def test_net_file_errors_name_the_line_and_key():
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET.replace("shared_biases: false, neuron: tanh", "shared_biases: 0, neuron: tanh"))
    assert (e.value.layer, e.value.key, e.value.line) == ("c2", "shared_biases", 5)
    assert "true or false" in str(e.value)
    # a local layer always has one bias per position: the key is not one of its keys
    local = NET.replace("type: conv, filters: 4", "type: local, filters: 4")
    with pytest.raises(engine.ConfigError) as e:
        engine.load(local)
    assert (e.value.layer, e.value.key, e.value.line) == ("c1", "shared_biases", 4)


def test_in_a_net_params_gradients_and_a_training_step():
    net = engine.load(NET, seed=0)
    state = net.state_dict()
    assert state["c1.bias"].shape == (4, 8, 8) and state["c2.bias"].shape == (6, 3, 3)
    # c1: 3*9*4 + 4*64 = 108 + 256; c2: 4*9*6 + 6*9 = 216 + 54; f: 6*9*5 + 5 = 275
    assert net.num_params == 364 + 270 + 275
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 3, 4])
    loss, grads = net.gradients(x, labels, train=True)
    assert np.isfinite(loss) and grads["c1.bias"].shape == (4, 8, 8)
    assert np.abs(grads["c1.bias"]).max() > 0
    from engine.solver import SGD
    sgd = SGD.for_net(net, 0.9, 0.0005)
    before = {k: v.copy() for k, v in net.parameters().items()}
    sgd.step({k: g.copy() for k, g in grads.items()}, 0.1)
    after = net.parameters()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert net.loss(x, labels) < loss


def test_onnx_export_runs_as_ours():
    pytest.importorskip("onnx", reason="exporting needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    from engine.tools import export_onnx
    net = engine.load(NET, seed=1)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    model = export_onnx.to_onnx(net, outputs=["c1", "c2"])
    export_onnx.check(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 2 and ops.count("Add") >= 2
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    ours = net.forward(x, outputs=["c1", "c2"])
    for name in ("c1", "c2"):
        close(theirs[name], ours[name])


def test_torch_mirror_is_the_net():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    from bench.torch_mirror import mirror
    net = engine.load(NET, seed=2)
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        probs = mirror(net).eval()(torch.from_numpy(x)).numpy()
    close(probs, net.forward(x))
