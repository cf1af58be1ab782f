"""conv with `channel_sets` (cuda-convnet's randSparse filterConns): group g reads the input
channels channel_sets[g], in that order. Both CPU paths (GEMM and direct) = the NumPy
reference = PyTorch (index_select + grouped conv2d), finite differences, the parameter
count, the key's checks, a net that trains, the ONNX export and the torch mirror.
The CPU = CUDA comparison is tests/cuda/test_conv_channel_sets.py."""
import numpy as np
import pytest
from helpers import check_filter_layer, close, filter_layer_case, filter_ref_args

import engine
import layers
from engine import gradcheck
from layers.conv import ConvLayer, reference

# (N, C, H, W, filters, size, stride, padding, channel_sets, neuron, shared biases, direct path?)
CASES = [
    (2, 6, 7, 6, 4, 3, 1, 1, [[5, 0, 3, 1], [2, 4, 0, 5]], "relu", True, True),    # overlapping sets
    (3, 8, 6, 7, 8, 3, 2, 1, [[7, 2], [0, 5], [3, 6], [1, 4]], "tanh", True, False),  # a partition
    (2, 5, 6, 5, 6, 2, 1, 0, [[4, 1], [0, 4], [3, 3]], "abs", False, True),         # a repeat; 2 unread
    (1, 4, 5, 5, 3, 3, 1, 2, [[3, 1, 2, 0]], None, True, True),                       # one group: a permutation
    # 116 channels a set (8 read over and over): 1,044 taps per group, past the direct rule's
    (2, 8, 9, 9, 6, 3, 1, 1, [[i * 3 % 8 for i in range(116)], [(i * 5 + 1) % 8 for i in range(116)]],
     "relu", True, False),
]
IDS = ["-".join(str(v) for i, v in enumerate(c) if i != 8) for c in CASES]
assert ConvLayer.DIRECT_MAX_TAPS < 116 * 3 * 3


def make(c, h, w, **cfg):
    return layers.get("conv")("conv", cfg, [(c, h, w)])


def setup_case(case, seed=0):
    n, c, h, w, f, k, s, p, sets, fn, shared, direct = case
    layer, params, x, rng = filter_layer_case("conv", n, c, h, w, seed, filters=f, size=k, stride=s, padding=p,
                                              groups=len(sets), channel_sets=sets, neuron=fn,
                                              shared_biases=shared, init_w=0.3)
    assert layer.direct == direct
    return layer, params, x, rng


def ref_args(layer, params):
    return filter_ref_args(layer, params, "channel_sets")


def check_against_reference(layer, params, x, rng):
    check_filter_layer(layer, params, x, rng, reference, "channel_sets")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernels_match_reference(case):
    layer, params, x, rng = setup_case(case)
    sets = case[8]
    assert params["weight"].shape == (case[4], len(sets[0]), case[5], case[5])
    check_against_reference(layer, params, x, rng)


def test_gemm_path_over_several_chunks(monkeypatch):
    monkeypatch.setattr(ConvLayer, "CHUNK_BYTES", 1)        # one image per chunk
    layer, params, x, rng = setup_case(CASES[1], seed=5)
    assert layer._chunk(x.shape[0]) == 1
    check_against_reference(layer, params, x, rng)


def test_the_gather_written_out():
    """The reference's gather, spelled out on one case: y = conv of x[:, sets] by hand."""
    layer, params, x, _ = setup_case(CASES[1], seed=6)
    picked = x[:, [7, 2, 0, 5, 3, 6, 1, 4]].astype(np.float64)
    plain = reference.forward(picked, *ref_args(layer, params)[:6])
    close(layer.forward(x, params), plain)


@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])     # not relu: its kink
def test_gradient_finite_differences(case):
    layer, params, x, _ = setup_case(case, seed=1)
    if case[9] == "abs":                          # inputs far from abs's kink
        params["bias"] += np.sign(params["bias"]) * 3.0
    gradcheck.check(layer, [x], params)


def test_reference_gradient_float64():
    """The reference's dx (a scatter-add over the sets, a repeated channel included) against
    its own forward by central differences."""
    layer, params, x, rng = setup_case(CASES[2], seed=2)
    x = x[:1].astype(np.float64)
    args = list(ref_args(layer, params))
    args[5] = None                                 # linear: no kink to straddle
    dy = rng.standard_normal((1,) + layer.output_shape)
    dx, dw, _ = reference.backward(dy, x, *args)
    h = 1e-6
    for target, grad in ((x, dx), (args[0], dw)):
        for flat in rng.choice(target.size, 16, replace=False):
            idx = np.unravel_index(flat, target.shape)
            old = target[idx]
            vals = []
            for step in (h, -h):
                target[idx] = old + step
                vals.append(np.sum(dy * reference.forward(x, *args)))
            target[idx] = old
            assert abs((vals[0] - vals[1]) / (2 * h) - grad[idx]) < 1e-6 * max(1.0, abs(grad[idx]))
    assert np.all(dx[:, 2] == 0) and np.all(dx[:, 3] != 0)     # channel 2 unread; 3 read twice


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_pytorch(case):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    layer, params, x, rng = setup_case(case, seed=4)
    n, c, h, w, f, k, s, p, sets, fn, shared, _ = case
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(params["weight"], dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(params["bias"], dtype=torch.float64, requires_grad=True)
    index = torch.tensor([ch for one in sets for ch in one])
    xs = xt.index_select(1, index)
    pre = F.conv2d(xs, wt, bt if shared else None, stride=s, padding=p, groups=len(sets))
    pre = pre if shared else pre + bt
    act = {None: lambda a: a, "relu": torch.relu, "abs": torch.abs, "tanh": torch.tanh}[fn]
    yt = act(pre)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(grads["weight"], wt.grad.numpy())
    close(grads["bias"], bt.grad.numpy())


def test_consecutive_sets_are_plain_groups_bit_for_bit():
    """channel_sets naming each group's own consecutive channels computes exactly the plain
    grouped conv: the same float32 sums, on both paths."""
    rng = np.random.default_rng(7)
    for stride in (1, 2):
        cfg = dict(filters=4, size=3, stride=stride, padding=1, groups=2, neuron="relu")
        plain = make(6, 7, 6, **cfg)
        sets = make(6, 7, 6, channel_sets=[[0, 1, 2], [3, 4, 5]], **cfg)
        params = plain.init_params(rng)
        x = rng.standard_normal((2, 6, 7, 6)).astype(np.float32)
        np.testing.assert_array_equal(sets.forward(x, params), plain.forward(x, params))
        dy = rng.standard_normal((2,) + plain.output_shape).astype(np.float32)
        dxp, gp = plain.backward(dy, params)
        dxs, gs = sets.backward(dy, params)
        np.testing.assert_array_equal(dxs, dxp)
        for key in gp:
            np.testing.assert_array_equal(gs[key], gp[key])


def test_parameter_count_and_default():
    # cuda-convnet's layers-example conv32-3: 128 channels, groups 4 x 32 filters, filterChannels 64,
    # 5x5: weights 64*25*128 = 204,800 + 128 biases = 204,928 (without sets 32*25*128 + 128)
    rng = np.random.default_rng(0)
    sets = [sorted(rng.choice(128, 64, replace=False).tolist()) for _ in range(4)]
    layer = make(128, 15, 15, filters=128, size=5, stride=2, padding=2, groups=4, channel_sets=sets)
    assert layer.param_shapes() == {"weight": (128, 64, 5, 5), "bias": (128,)}
    assert sum(int(np.prod(s)) for s in layer.param_shapes().values()) == 204_928
    assert layer.macs() == 128 * 64 * 25 * 8 * 8
    default = make(128, 15, 15, filters=128, size=5, stride=2, padding=2, groups=4)
    assert default.cfg["channel_sets"] is None and default.param_shapes()["weight"] == (128, 32, 5, 5)


def test_declared_buffers_are_the_allocated_ones():
    for case in CASES[:2]:           # direct, GEMM
        layer, params, x, rng = setup_case(case)
        y = layer.forward(x, params)
        layer.backward(rng.standard_normal(y.shape).astype(np.float32), params)
        declared = layer.buffer_shapes(x.shape[0], backward=True)
        assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}
        assert declared["xg"][1] == (x.shape[0], sum(map(len, case[8]))) + x.shape[2:]


NET = ("name: t\ninput: {shape: [3, 8, 8]}\nlayers:\n"
       "  - {name: c1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu}\n"
       "  - name: c2\n    type: conv\n    filters: 6\n    size: 3\n    stride: 2\n    groups: 3\n"
       "    channel_sets: [[7, 0, 3, 4], [1, 2, 5, 6], [6, 0, 2, 4]]\n    neuron: tanh\n"
       "  - {name: f, type: fc, outputs: 5}\n  - {name: prob, type: softmax}\n")


@pytest.mark.parametrize("bad, message", [
    ("[[7, 0, 3, 4], [1, 2, 5, 6]]", "one non-empty list of input channels per group (groups=3)"),
    ("[[7, 0, 3, 4], [1, 2, 5], [6, 0, 2, 4]]", "lengths [4, 3, 4]"),
    ("[[7, 0, 3, 4], [1, 2, 5, 8], [6, 0, 2, 4]]", "group 1: 8 is not an input channel (0..7)"),
    ("[[7, 0, 3, 4], [1, 2, 5, x], [6, 0, 2, 4]]", "group 1: 'x' is not an input channel"),
    ("[[7, 0, 3, 4], [], [6, 0, 2, 4]]", "one non-empty list"),
    ("7", "one non-empty list"),
])
def test_net_file_errors_name_the_line_and_key(bad, message):
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET.replace("[[7, 0, 3, 4], [1, 2, 5, 6], [6, 0, 2, 4]]", bad))
    assert (e.value.layer, e.value.key, e.value.line) == ("c2", "channel_sets", 11)
    assert message in str(e.value)


def test_in_a_net_params_gradients_and_a_training_step():
    net = engine.load(NET, seed=0)
    # c1: 3*9*8 + 8 = 224; c2: 6 filters x 4 channels x 9 + 6 = 222; f: 6*3*3*5 + 5 = 275
    assert net.num_params == 224 + 222 + 275
    assert net.state_dict()["c2.weight"].shape == (6, 4, 3, 3)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 3, 4])
    loss, grads = net.gradients(x, labels, train=True)
    assert np.isfinite(loss) and np.abs(grads["c1.weight"]).max() > 0
    from engine.solver import SGD
    sgd = SGD.for_net(net, 0.9, 0.0005)
    sgd.step({k: g.copy() for k, g in grads.items()}, 0.1)
    assert net.loss(x, labels) < loss


def test_onnx_export_runs_as_ours():
    pytest.importorskip("onnx", reason="exporting needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    from engine.tools import export_onnx
    net = engine.load(NET, seed=1)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    model = export_onnx.to_onnx(net, outputs=["c2"])
    export_onnx.check(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 2 and ops.count("Gather") == 1
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    close(theirs["c2"], net.forward(x, outputs=["c2"])["c2"])


def test_torch_mirror_is_the_net():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    from bench.torch_mirror import mirror
    net = engine.load(NET, seed=2)
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        probs = mirror(net).eval()(torch.from_numpy(x)).numpy()
    close(probs, net.forward(x))
