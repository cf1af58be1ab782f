"""conv's Winograd F(2x2, 3x3) and F(2x2, 5x5) paths (layers/conv/winograd.py) against the plain
NumPy reference and the direct path: forward, dx, dW, bias gradients, every activation form,
odd and even maps, paddings 0 to size - 1, batches over many tasks and workers, serial and
parallel."""
import numpy as np
import pytest
from helpers import close
from test_conv import check_path, ref_args, run_path, setup_case

import layers
from layers.conv import reference, winograd
from layers.conv.wino_tiles import SCHEMES

# (N, C, H, W, filters, size, stride, padding, groups, neuron)
CASES = [
    (3, 4, 7, 6, 5, 3, 1, 1, 1, "tanh"),          # odd height: the last tile row half outside
    (2, 16, 28, 28, 16, 3, 1, 1, 1, None),       # the digits ResNet's layer1 (tile rows of 14)
    (5, 8, 7, 7, 12, 3, 1, 1, 1, "relu"),        # 7x7 maps: 4 tiles a row, tasks across images
    (2, 6, 9, 13, 7, 3, 1, 0, 1, "abs"),         # no padding (abs keeps its input: pre)
    (2, 5, 6, 5, 9, 3, 1, 2, 1, "logistic"),     # padding 2: outputs larger than the input
    (9, 3, 4, 4, 4, 3, 1, 1, 1, "linear"),       # 2x2 tiles a map, one task many images
    (1, 33, 5, 17, 70, 3, 1, 1, 1, "relu"),      # filters past one tile block, 17 wide: 3 vectors
    (3, 32, 16, 16, 32, 5, 1, 2, 1, "relu"),     # 5x5: CIFAR-10's conv2 (80sec, 18pct)
    (2, 6, 9, 13, 7, 5, 1, 2, 1, "tanh"),        # 5x5, odd maps: the last tile row and column half out
    (2, 5, 8, 8, 9, 5, 1, 0, 1, None),           # 5x5 without padding: a 4x4 output
    (2, 5, 6, 5, 9, 5, 1, 4, 1, "abs"),          # 5x5, padding 4: outputs larger than the input
    (1, 3, 5, 17, 20, 5, 1, 3, 1, "logistic"),   # 5x5, 17 wide: 3 vectors of tiles
]


def ids(case):
    return "-".join(map(str, case))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_winograd_matches_reference_and_direct(case):
    layer = check_path(case, "winograd", "direct")[0][0]
    assert layer._on_wino


@pytest.mark.parametrize("case", CASES[:3] + CASES[8:9], ids=ids)
def test_winograd_serial_twins_match(case):
    """The serial twins (a column's thread) give the parallel kernels' bits."""
    want = run_path(case, "winograd")
    got = run_path(case, "winograd", serial=True)
    for a, b in zip(want[3:6], got[3:6]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(want[6]["weight"], got[6]["weight"])


def test_winograd_without_bias_per_position_bias_and_repeated_backward():
    """bias: false (the plain path: the transforms write y, nothing after), biases per output
    position, a second backward and a backward without dx give the same gradients."""
    rng = np.random.default_rng(3)
    for cfg in ({"bias": False}, {"shared_biases": False, "neuron": "relu"}):
        layer = layers.get("conv")("conv", {"filters": 6, "size": 3, "padding": 1, **cfg}, [(5, 9, 8)])
        layer.use_path("winograd")
        params = {name: (rng.standard_normal(shape) * 0.3).astype(np.float32)
                  for name, shape in layer.param_shapes().items()}
        x = rng.standard_normal((4, 5, 9, 8)).astype(np.float32)
        y = layer.forward(x, params).copy()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        args = ref_args(layer, params)
        close(y, reference.forward(x.astype(np.float64), *args))
        rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x.astype(np.float64), *args)
        dx, grads = layer.backward(dy, params)
        close(dx, rdx)
        close(grads["weight"], rdw)
        if "bias" in grads:
            close(grads["bias"], rdb)
        again = layer.backward(dy, params, need_dx=False)[1]["weight"]
        np.testing.assert_array_equal(again, grads["weight"])


@pytest.mark.parametrize("neuron", ["relu", "tanh", "abs"])
@pytest.mark.parametrize("path", ["forward", "dx"])
@pytest.mark.parametrize("size", [3, 5])
def test_winograd_chunks_of_tile_rows_match_one_chunk(size, path, neuron):
    """A batch in groups of images padded at a time, each in chunks of one or three tile rows
    (images split between chunks), gives what one chunk of them all gives (to BLAS's rounding, which moves with a GEMM's width); tanh
    and abs (applied after the kernels, to the whole output) once, not once a chunk."""
    case = (5, 8, 10, 7, 6, size, 1, size // 2, 1, neuron)
    _, _, _, y, _, dx, grads = run_path(case, "winograd")
    for rows in (1, 3):
        layer, params, x, rng = setup_case(case)
        layer.use_path("winograd")
        tiles = layer._wgeom.tw if path == "forward" else layer._wgeom.twd
        layer.CHUNK_BYTES = 4 * (size + 1) ** 2 * (layer.channels + layer.filters) * tiles * rows
        groups = layer._wino_groups(x.shape[0])          # images padded at a time
        chunks = layer._wino_chunks(groups[0][1], dx=path == "dx")
        assert len(groups) > 1 and max(u1 - u0 for u0, u1 in chunks) == rows and len(chunks) > 1
        y1 = layer.forward(x, params).copy()
        dy = rng.standard_normal(y1.shape).astype(np.float32)
        dx1, grads1 = layer.backward(dy, params)
        close(y1, y)
        close(dx1, dx)
        close(grads1["weight"], grads["weight"])


def test_winograd_rule():
    """The shapes bench/bench_conv.py measured, on the side that won there."""
    make = layers.get("conv")

    def rule(c, hw, f, n):
        layer = make("conv", {"filters": f, "size": 3, "padding": 1}, [(c, hw, hw)])
        return layer._wino_at(n)

    assert rule(256, 13, 192, 32) and rule(192, 13, 192, 32) and rule(192, 13, 128, 32)  # AlexNet's columns
    assert rule(64, 56, 64, 8) and rule(128, 28, 128, 8) and rule(256, 14, 256, 8)      # ResNet-18's layer1-3
    assert rule(512, 7, 512, 32) and not rule(512, 7, 512, 8)     # layer4: 7x7, wide; few tiles at batch 8
    assert rule(32, 14, 32, 128)                                   # the digits ResNet's layer2
    assert not rule(16, 28, 16, 128)                               # its layer1: 16 channels
    assert not rule(64, 7, 64, 128)                                # its layer3: 7x7, 64 channels
    assert not rule(3, 224, 64, 16)                                # VGG-16's conv1_1
    assert not rule(256, 13, 192, 1)                               # one image: 49 tiles

    def rule5(c, hw, f, n):
        layer = make("conv", {"filters": f, "size": 5, "padding": 2}, [(c, hw, hw)])
        return layer._wino_at(n)

    assert rule5(32, 16, 32, 128) and rule5(32, 8, 64, 128)        # CIFAR-10's conv2, conv3
    assert rule5(16, 14, 32, 128) and rule5(48, 27, 128, 32)       # alexnet-digits' conv2, AlexNet's
    assert not rule5(6, 14, 16, 128) and not rule5(3, 32, 32, 128)  # LeNet-5's conv2, CIFAR-10's conv1


def test_only_3x3_and_5x5_stride_1_single_group_takes_winograd():
    make = layers.get("conv")
    for cfg in ({"size": 7, "padding": 3}, {"size": 1}, {"size": 3, "stride": 2, "padding": 1},
                {"size": 5, "stride": 2, "padding": 2}, {"size": 3, "padding": 1, "groups": 2},
                {"size": 3, "padding": 3}, {"size": 5, "padding": 5}, {"size": 5, "padding": 2, "padding_end": 1}):
        layer = make("conv", {"filters": 8, **cfg}, [(8, 9, 9)])
        assert not layer.winograd
        with pytest.raises(ValueError, match="winograd"):
            layer.use_path("winograd")


@pytest.mark.parametrize("size", [3, 5])
def test_winograd_weight_transform(size):
    """G g G^T: a filter's transform, multiplied elementwise with a tile's B^T d B and back
    through A^T . A, is the direct 2x2 output (3x3: B^T and A^T written out here)."""
    rng = np.random.default_rng(0)
    n = size + 1
    w = rng.standard_normal((5, 3, size, size)).astype(np.float32)
    u = winograd.transform_weights(w, winograd.g_matrix(size), np.zeros((n * n, 5, 3), np.float32))
    if size == 3:
        bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
        at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    else:
        bt, at = (np.array(SCHEMES[n][k], float) for k in ("BT", "AT"))
    d = rng.standard_normal((3, n, n))
    v = np.einsum("ia,cab,jb->ijc", bt, d, bt).reshape(n * n, 3)
    out = np.einsum("ia,kab,jb->kij", at, (u * v[:, None, :]).sum(axis=2).reshape(n, n, 5).transpose(2, 0, 1), at)
    want = np.array([[[np.sum(w[k] * d[:, i:i + size, j:j + size]) for j in range(2)] for i in range(2)]
                     for k in range(5)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [3, 5])
def test_winograd_weight_gradient_is_the_transpose_of_the_weight_transform(size):
    """G^T M G (weight_gradient) is the adjoint of G g G^T (transform_weights): <U(g), M> =
    <g, G^T M G> for any g and M."""
    rng = np.random.default_rng(1)
    n, f, c = size + 1, 4, 3
    g = rng.standard_normal((f, c, size, size)).astype(np.float32)
    m = rng.standard_normal((n * n, f, c)).astype(np.float32)
    u = winograd.transform_weights(g, winograd.g_matrix(size), np.zeros((n * n, f, c), np.float32))
    dw = np.zeros((f, c * size * size), np.float32)
    winograd.weight_gradient(m, winograd.g_matrix(size), dw)
    np.testing.assert_allclose(np.vdot(u.astype(np.float64), m), np.vdot(g.reshape(f, -1).astype(np.float64), dw),
                               rtol=1e-5)
