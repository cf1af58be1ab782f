"""pool's `padding`, `ceil`, `global` and `adaptive` keys: the kernels against the NumPy
reference, central differences and PyTorch (F.max_pool2d / F.avg_pool2d with padding and
ceil_mode, F.adaptive_avg_pool2d); the output-size rule; the key checks."""
import numpy as np
import pytest
from helpers import distinct

import engine
import layers
from engine import gradcheck
from layers.base import out_size_ceil
from layers.pool import out_side, reference

# (size, stride, padding, ceil, C x H x W)
CASES = [
    (3, 2, 1, True, (3, 9, 8)),     # GoogLeNet/ResNet's 3/2 pad 1
    (3, 2, 1, False, (3, 9, 8)),
    (2, 2, 1, True, (2, 5, 6)),     # 5: the ceil window starting in the right padding is dropped
    (2, 2, 1, False, (2, 5, 7)),
    (3, 1, 1, True, (2, 5, 6)),     # GoogLeNet's inception branch pool: same size
    (4, 3, 2, True, (2, 8, 7)),
    (5, 2, 2, False, (1, 4, 9)),    # window larger than the input, not the padded input
    (3, 3, 0, False, (2, 8, 13)),   # floor without padding: the tail is dropped
]
BINS = [((1, 1), (3, 5, 7)), ((2, 3), (2, 5, 7)), ((3, 2), (2, 7, 4)), ((4, 4), (1, 8, 8)),
        ((6, 5), (1, 4, 3))]      # non-uniform, overlapping; more bins than input cells


def make(mode, size=None, stride=None, padding=0, ceil=True, neuron=None, shape=(3, 9, 8), **extra):
    cfg = dict(mode=mode, padding=padding, ceil=ceil, neuron=neuron, **extra)
    if size is not None:
        cfg["size"] = size
    if stride is not None:
        cfg["stride"] = stride
    return layers.get("pool")("pool", cfg, [shape])


def adaptive(bins, shape, neuron=None):
    return layers.get("pool")("pool", {"mode": "avg", "adaptive": list(bins), "neuron": neuron}, [shape])


def run(layer, x, seed=1):
    y = layer.forward(x, {}).copy()
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    return y, g, dx.copy()


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,pad,ceil,shape", CASES)
@pytest.mark.parametrize("neuron", [None, "relu", "tanh"])
def test_matches_reference(mode, size, stride, pad, ceil, shape, neuron):
    x = np.random.default_rng(size + pad).standard_normal((2,) + shape).astype(np.float32)
    y, g, dx = run(make(mode, size, stride, pad, ceil, neuron, shape), x)
    kw = dict(padding=pad, ceil=ceil)
    np.testing.assert_allclose(y, reference.forward(x, mode, size, stride, neuron, **kw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, reference.backward(x, g, mode, size, stride, neuron, **kw),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bins,shape", BINS)
@pytest.mark.parametrize("neuron", [None, "abs"])
def test_adaptive_matches_reference(bins, shape, neuron):
    x = np.random.default_rng(3).standard_normal((2,) + shape).astype(np.float32)
    y, g, dx = run(adaptive(bins, shape, neuron), x)
    assert y.shape == (2, shape[0]) + bins
    np.testing.assert_allclose(y, reference.forward(x, "avg", neuron=neuron, bins=bins), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, reference.backward(x, g, "avg", neuron=neuron, bins=bins),
                               rtol=1e-5, atol=1e-6)


def test_against_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    for size, stride, pad, ceil, shape in CASES + [(3, 2, 1, True, (4, 56, 41)), (3, 2, 0, True, (2, 55, 32))]:
        x = rng.standard_normal((3,) + shape).astype(np.float32)
        for mode in ("max", "avg"):
            y, g, dx = run(make(mode, size, stride, pad, ceil, shape=shape), x)
            xt = torch.tensor(x, requires_grad=True)
            pool = F.max_pool2d if mode == "max" else F.avg_pool2d    # count_include_pad=True
            yt = pool(xt, size, stride, padding=pad, ceil_mode=ceil)
            assert tuple(yt.shape) == y.shape, (size, stride, pad, ceil, shape)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
            yt.backward(torch.tensor(g))
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    for bins, shape in BINS + [((7, 7), (3, 13, 17))]:
        x = rng.standard_normal((2,) + shape).astype(np.float32)
        y, g, dx = run(adaptive(bins, shape), x)
        xt = torch.tensor(x, requires_grad=True)
        yt = F.adaptive_avg_pool2d(xt, bins)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_output_size_rule_against_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    for side in range(1, 12):
        for size in range(1, 6):
            for stride in range(1, size + 1):
                for pad in range(size // 2 + 1):
                    if size > side + 2 * pad:
                        continue
                    for ceil in (True, False):
                        want = F.max_pool2d(torch.zeros(1, 1, side, 1), (size, 1), (stride, 1), (pad, 0),
                                            ceil_mode=ceil).shape[2]
                        assert out_side(side, size, stride, pad, ceil) == want, (side, size, stride, pad, ceil)
                    if pad == 0:      # today's nets: cuda-convnet's rule, unchanged
                        assert out_side(side, size, stride) == out_size_ceil(side, size, stride)


def test_the_last_window_must_start_inside_the_input_or_its_left_padding():
    # 5 + 2*1 - 2 = 5 over stride 2: ceil gives 4 windows, the 4th would start at padded column
    # 6, in the right padding only: dropped (PyTorch's rule), so 3
    assert make("max", 2, 2, 1, True, shape=(1, 5, 5)).output_shape == (1, 3, 3)
    assert make("max", 2, 2, 1, False, shape=(1, 5, 5)).output_shape == (1, 3, 3)
    assert make("max", 2, 2, 1, True, shape=(1, 6, 6)).output_shape == (1, 4, 4)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,pad,ceil,neuron", [(3, 2, 1, True, None), (2, 2, 1, False, "softrelu"),
                                                        (3, 1, 1, True, "leaky[0.1]")])
def test_gradient_finite_differences(mode, size, stride, pad, ceil, neuron):
    shape = (2, 7, 6)
    gradcheck.check(make(mode, size, stride, pad, ceil, neuron, shape), [distinct((2,) + shape, seed=size)])


@pytest.mark.parametrize("bins", [(1, 1), (3, 4)])
def test_adaptive_finite_differences(bins):
    shape = (2, 7, 6)
    gradcheck.check(adaptive(bins, shape, "tanh"), [distinct((2,) + shape, seed=2)])


def test_padded_cells_never_win_and_count_in_the_average():
    # an all-negative plane: a padded max is still the largest real value; 2x2 windows with
    # stride 2 and padding 1 on a 2x2 plane each hold one real cell
    x = -np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(make("max", 2, 2, 1, shape=(1, 2, 2)).forward(x, {})[0, 0],
                                  [[-1, -2], [-3, -4]])
    np.testing.assert_array_equal(make("avg", 2, 2, 1, shape=(1, 2, 2)).forward(x, {})[0, 0],
                                  [[-0.25, -0.5], [-0.75, -1]])


def test_global_is_the_plane_mean():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    layer = layers.get("pool")("g", {"mode": "avg", "global": True}, [(3, 5, 7)])
    assert layer.output_shape == (3, 1, 1)
    np.testing.assert_allclose(layer.forward(x, {})[:, :, 0, 0], x.astype(np.float64).mean(axis=(2, 3)),
                               rtol=1e-5, atol=1e-6)
    dx, _ = layer.backward(np.ones((2, 3, 1, 1), np.float32), {})
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 35), rtol=1e-6)


def test_max_serial_twin_matches_parallel_with_padding_and_ties():
    from layers import threads
    x = np.random.default_rng(2).integers(-2, 3, (3, 4, 9, 10)).astype(np.float32)
    out = []
    for serial in (False, True):
        layer = make("max", 3, 2, 1, shape=(4, 9, 10))
        with threads.serial(serial):
            out.append(run(layer, x))
        np.testing.assert_array_equal(out[-1][0], reference.forward(x, "max", 3, 2, padding=1))
        np.testing.assert_allclose(out[-1][2], reference.backward(x, out[-1][1], "max", 3, 2, padding=1),
                                   atol=1e-6)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg,shape", [({"mode": "max", "size": 3, "stride": 2, "padding": 1}, (1, 9, 8)),
                                       ({"mode": "avg", "size": 5, "stride": 3, "padding": 2, "ceil": False},
                                        (1, 4, 11)),
                                       ({"mode": "avg", "adaptive": [3, 2]}, (1, 7, 5)),
                                       ({"mode": "avg", "adaptive": 4}, (1, 3, 9)),
                                       ({"mode": "avg", "global": True}, (1, 6, 4))])
def test_macs_counts_window_reads(cfg, shape):
    layer = layers.get("pool")("p", cfg, [shape])
    bins = layer.out_hw if layer.bins is not None else None
    wins = reference.windows(shape[1], shape[2], layer.size, layer.stride, layer.padding, layer.ceil, bins)
    reads = sum((r.stop - r.start) * (c.stop - c.start) for _, _, r, c, _ in wins)
    assert layer.macs() == reads


@pytest.mark.parametrize("cfg,key,message", [
    ({"mode": "max", "size": 3, "padding": 2}, "padding", "padding 2 more than half the window 3"),
    ({"mode": "max", "size": 7, "padding": 1}, "size", "pool window 7 larger than padded input 6x6"),
    ({"mode": "avg"}, "size", "missing required key"),
    ({"mode": "max", "global": True}, "mode", "mode must be avg"),
    ({"mode": "avg", "global": True, "adaptive": [2, 2]}, "adaptive", "exclude each other"),
    ({"mode": "avg", "global": True, "size": 2}, "size", "does not apply"),
    ({"mode": "avg", "adaptive": [2, 2], "padding": 1}, "padding", "does not apply"),
    ({"mode": "avg", "adaptive": [2, 2], "ceil": False}, "ceil", "does not apply"),
    ({"mode": "avg", "adaptive": [2, 0]}, "adaptive", "positive integers"),
    ({"mode": "avg", "adaptive": [2, 2, 2]}, "adaptive", "must be [H, W]"),
    ({"mode": "avg", "adaptive": "2x2"}, "adaptive", "must be [H, W]"),
])
def test_bad_keys_say_why(cfg, key, message):
    with pytest.raises(layers.LayerError) as e:
        layers.get("pool")("p", cfg, [(2, 4, 4)])
    assert e.value.key == key
    assert message in e.value.message


NET = """
input: {shape: [2, 9, 9]}
layers:
  - {name: p1, type: pool, mode: max, size: 3, stride: 2, padding: %s}
  - {name: p2, type: pool, mode: avg, global: true}
  - {name: f, type: fc, outputs: 3}
  - {name: prob, type: softmax}
"""


def test_in_a_net_file():
    net = engine.load(NET % 1)
    assert [n.layer.output_shape for n in net.layers[:2]] == [(2, 5, 5), (2, 1, 1)]
    with pytest.raises(engine.ConfigError) as e:
        engine.load(NET % 2)
    assert (e.value.layer, e.value.key) == ("p1", "padding")


# ---- ONNX export and the PyTorch mirror ------------------------------------------------------
EXPORT_NET = {"input": {"shape": [3, 10, 9]}, "layers": [
    {"name": "c", "type": "conv", "filters": 4, "size": 3, "padding": 1, "neuron": "tanh"},
    {"name": "m1", "type": "pool", "mode": "max", "size": 3, "stride": 2, "padding": 1, "inputs": "c"},
    {"name": "a1", "type": "pool", "mode": "avg", "size": 3, "stride": 2, "padding": 1, "inputs": "c"},
    {"name": "a2", "type": "pool", "mode": "avg", "size": 4, "stride": 3, "padding": 2, "inputs": "c"},
    {"name": "a3", "type": "pool", "mode": "avg", "size": 2, "stride": 2, "padding": 1, "ceil": False,
     "inputs": "c"},
    {"name": "m2", "type": "pool", "mode": "max", "size": 3, "stride": 3, "ceil": False, "inputs": "c"},
    {"name": "g", "type": "pool", "mode": "avg", "global": True, "inputs": "c", "neuron": "selu"},
    {"name": "b", "type": "pool", "mode": "avg", "adaptive": [5, 3], "inputs": "c"},
    {"name": "f", "type": "fc", "outputs": 3, "inputs": ["m1", "a1", "a2", "a3", "m2", "g", "b"]},
    {"name": "prob", "type": "softmax"}]}


def test_onnx_export_matches():
    pytest.importorskip("onnx", reason="exporting needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    from engine.tools import export_onnx
    net = engine.load(EXPORT_NET, seed=1)
    names = [n.name for n in net.layers]
    model = export_onnx.to_onnx(net, outputs=names)
    export_onnx.check(model)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 9)).astype(np.float32)
    theirs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    ours = net.forward(x, outputs=names)
    for name in names:
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_onnx_export_of_uneven_adaptive_bins_is_exact():
    """Bins of different sizes (3 on 7: rows 0-2, 2-4, 4-6) export as a MatMul of bin averages."""
    pytest.importorskip("onnx", reason="exporting needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="running the exported model needs onnxruntime")
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle for adaptive bins")
    from engine.tools import export_onnx
    net = engine.load({"input": {"shape": [2, 7, 6]}, "layers": [
        {"name": "bins", "type": "pool", "mode": "avg", "adaptive": [3, 4]},
        {"name": "prob", "type": "softmax"}]})
    model = export_onnx.to_onnx(net, outputs=["bins"])
    export_onnx.check(model)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 6)).astype(np.float32)
    theirs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (3, 4)).numpy()
    np.testing.assert_allclose(theirs["bins"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theirs["bins"], net.forward(x, outputs=["bins"])["bins"], rtol=1e-5, atol=1e-6)


def test_torch_mirror_matches():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the mirror needs it")
    from bench.torch_mirror import mirror
    net = engine.load(EXPORT_NET, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 9)).astype(np.float32)
    with torch.no_grad():
        probs = mirror(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(probs, net.forward(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,stride,pad,ceil,shape", CASES + [(3, 2, 1, False, (2, 20, 23)),
                                                              (2, 1, 0, True, (1, 6, 19)),
                                                              (3, 2, 0, True, (2, 11, 12))])
def test_max_ties_go_to_the_first_element_everywhere(size, stride, pad, ceil, shape):
    """Small integers tie in most windows: inner and edge windows alike route the gradient to
    their first maximum, row-major."""
    x = np.random.default_rng(size * 7 + stride).integers(0, 3, (2,) + shape).astype(np.float32)
    y, g, dx = run(make("max", size, stride, pad, ceil, None, shape), x)
    kw = dict(padding=pad, ceil=ceil)
    np.testing.assert_array_equal(y, reference.forward(x, "max", size, stride, None, **kw))
    np.testing.assert_allclose(dx, reference.backward(x, g, "max", size, stride, None, **kw), rtol=1e-6, atol=1e-6)
