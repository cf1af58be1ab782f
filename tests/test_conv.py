import numpy as np
import pytest
from helpers import check_filter_layer, close, filter_layer_case, filter_ref_args

import layers
from engine import gradcheck
from layers.conv import reference

# (N, C, H, W, filters, size, stride, padding, groups, neuron): odd, non-square shapes
CASES = [
    (3, 6, 9, 7, 6, 3, 2, 1, 2, "abs"),
    (1, 6, 8, 11, 9, 4, 3, 2, 3, "relu"),
    (3, 4, 7, 6, 5, 3, 1, 1, 1, "tanh"),
    (1, 6, 10, 9, 4, 5, 2, 2, 2, "logistic"),
    (3, 9, 6, 8, 6, 2, 3, 1, 3, "linear"),
    (3, 3, 5, 5, 2, 5, 1, 0, 1, None),
]


def make(c, h, w, **cfg):
    return layers.get("conv")("conv", cfg, [(c, h, w)])


def setup_case(case, seed=0):
    n, c, h, w, f, k, s, p, g, fn = case
    return filter_layer_case("conv", n, c, h, w, seed, filters=f, size=k, stride=s, padding=p, groups=g,
                             neuron=fn, init_w=0.3)


def ref_args(layer, params):
    return filter_ref_args(layer, params)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_reference(case):
    check_filter_layer(*setup_case(case), reference)


def test_backward_without_dx_and_repeated_backward():
    # backward reuses the im2col buffer for dcols: a second backward must rebuild it
    layer, params, x, rng = setup_case(CASES[0])
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx1, g1 = layer.backward(dy, params)
    dx1, g1 = dx1.copy(), {k: v.copy() for k, v in g1.items()}   # the layer reuses its buffers
    dx2, g2 = layer.backward(dy, params)
    none, g3 = layer.backward(dy, params, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dx1, dx2)
    for g in (g2, g3):
        np.testing.assert_array_equal(g1["weight"], g["weight"])
        np.testing.assert_array_equal(g1["bias"], g["bias"])


@pytest.mark.parametrize("fn", ["tanh", "logistic", "linear"])   # smooth: no kinks for h=1e-2
def test_gradient_finite_differences(fn):
    layer, params, x, _ = setup_case((2, 4, 6, 5, 4, 3, 2, 1, 2, fn), seed=1)
    errs = gradcheck.check(layer, [x], params)
    assert set(errs) == {"input0", "weight", "bias"}


def test_gradient_finite_differences_two_joined_inputs():
    # the engine concatenates inputs along channels; groups=3 spans the join
    layer = layers.get("conv")("conv", {"filters": 3, "size": 2, "padding": 1, "groups": 3,
                                        "neuron": "tanh", "init_w": 0.3}, [(2, 4, 5), (1, 4, 5)])
    rng = np.random.default_rng(2)
    params = layer.init_params(rng)
    xs = [rng.standard_normal((2, 2, 4, 5)).astype(np.float32),
          rng.standard_normal((2, 1, 4, 5)).astype(np.float32)]
    assert set(gradcheck.check(layer, xs, params)) == {"input0", "input1", "weight", "bias"}


@pytest.mark.parametrize("fn", ["tanh", "linear"])
def test_reference_gradient_float64(fn):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 3, 3)) * 0.3
    b = rng.standard_normal(6)
    args = dict(stride=2, padding=1, groups=2, neuron=fn)
    y = reference.forward(x, w, b, **args)
    r = rng.standard_normal(y.shape)
    grads = reference.backward(r, x, w, b, **args)
    h = 1e-6
    for arr, grad in zip((x, w, b), grads):
        assert grad.shape == arr.shape
        for flat in rng.choice(arr.size, size=min(25, arr.size), replace=False):
            ix = np.unravel_index(flat, arr.shape)
            old = arr[ix]
            arr[ix] = old + h
            up = np.sum(r * reference.forward(x, w, b, **args))
            arr[ix] = old - h
            down = np.sum(r * reference.forward(x, w, b, **args))
            arr[ix] = old
            assert abs((up - down) / (2 * h) - grad[ix]) < 1e-6 * max(1.0, abs(grad[ix]))


@pytest.mark.parametrize("c, f, bad", [(4, 6, "(4)"), (6, 4, "(4)")])
def test_groups_must_divide_channels_and_filters(c, f, bad):
    with pytest.raises(layers.LayerError) as e:
        make(c, 8, 8, filters=f, size=3, groups=3)
    assert e.value.key == "groups"
    assert bad in e.value.message and "groups=3" in e.value.message
    assert str(c) in e.value.message and str(f) in e.value.message


def test_kernel_larger_than_padded_input():
    make(6, 3, 9, filters=2, size=5, padding=1)          # 3+2 = 5: just fits
    with pytest.raises(layers.LayerError) as e:
        make(6, 3, 9, filters=2, size=6, padding=1)      # non-square, 5 rows < 6
    assert e.value.key == "size"
    assert "6" in e.value.message and "5x11" in e.value.message


def test_non_spatial_input_and_missing_key():
    with pytest.raises(layers.LayerError) as e:
        layers.get("conv")("conv", {"filters": 4, "size": 3}, [(10,)])
    assert e.value.key == "inputs" and "[10]" in e.value.message
    with pytest.raises(layers.LayerError) as e:
        layers.get("conv")("conv", {"size": 3}, [(3, 8, 8)])
    assert e.value.key == "filters"


def test_shapes_and_macs():
    # AlexNet conv2 as Caffe writes it: 96 joined channels, 2 groups
    layer = make(96, 27, 27, filters=256, size=5, padding=2, groups=2)
    assert layer.output_shape == (256, 27, 27)
    assert layer.param_shapes() == {"weight": (256, 48, 5, 5), "bias": (256,)}
    assert layer.macs() == 256 * 48 * 25 * 27 * 27 == 223_948_800
    # floor rule on a non-square input: (227-11)//4+1 = 55, (200-11)//4+1 = 48
    assert make(3, 227, 200, filters=8, size=11, stride=4).output_shape == (8, 55, 48)


TORCH_CASES = [
    (2, 6, 9, 8, 6, 3, 2, 1, 2, "relu"),
    (3, 6, 7, 10, 9, 4, 3, 2, 3, "tanh"),
    (1, 4, 12, 12, 8, 5, 1, 2, 1, "logistic"),
    (2, 4, 8, 7, 4, 3, 1, 0, 2, "abs"),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_pytorch(case):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    act = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "abs": torch.abs}
    layer, params, x, rng = setup_case(case, seed=7)
    cfg = layer.cfg
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(params["weight"], dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(params["bias"], dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=cfg["stride"], padding=cfg["padding"],
                                    groups=cfg["groups"])
    ty = act[cfg["neuron"]](ty)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, ty.detach().numpy())
    close(dx, tx.grad.numpy())
    close(grads["weight"], tw.grad.numpy())
    close(grads["bias"], tb.grad.numpy())


# ---- padding_end: extra zeros past the bottom/right edge (cuda-convnet's output rule) -------
# (N, C, H, W, filters, size, stride, padding, padding_end, groups, neuron)
PADDING_END_CASES = [
    (2, 3, 9, 9, 4, 3, 4, 0, 2, 1, "relu"),      # 1 + ceil(6/4) = 3 outputs where floor gives 2
    (1, 4, 7, 6, 4, 3, 2, 1, 1, 2, "tanh"),      # non-square, groups 2, with padding
    (2, 2, 5, 5, 2, 2, 3, 1, 1, 1, None),        # stride > size
]


def setup_padding_end(case, seed=0):
    n, c, h, w, f, k, s, p, e, g, fn = case
    rng = np.random.default_rng(seed)
    layer = make(c, h, w, filters=f, size=k, stride=s, padding=p, padding_end=e, groups=g,
                 neuron=fn, init_w=0.3)
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(f)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return layer, params, x, rng


def check_on_padded_input(case):
    """The layer against the reference on x with its zeros written out: p rows/cols before,
    p + e after, and no padding."""
    n, c, h, w, f, k, s, p, e, g, fn = case
    layer, params, x, rng = setup_padding_end(case)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p + e), (p, p + e)))
    args = (params["weight"].astype(np.float64), params["bias"].astype(np.float64), s, 0, g, fn)
    want = reference.forward(xp, *args)
    y = layer.forward(x, params)
    assert y.shape == want.shape == (n,) + layer.output_shape
    close(y, want)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), xp, *args)
    close(dx, rdx[:, :, p:p + h, p:p + w])
    close(grads["weight"], rdw)
    close(grads["bias"], rdb)
    return layer


@pytest.mark.parametrize("case", PADDING_END_CASES, ids=lambda c: "-".join(map(str, c)))
def test_padding_end_matches_reference_on_explicitly_padded_input(case):
    check_on_padded_input(case)


def test_padding_end_gives_cuda_convnets_output_size():
    # 224 input, 11x11, stride 4, no padding: cuda-convnet's 1 + ceil(213/4) = 55; floor gives 54
    assert make(3, 224, 224, filters=8, size=11, stride=4, padding_end=3).output_shape == (8, 55, 55)
    assert make(3, 224, 224, filters=8, size=11, stride=4).output_shape == (8, 54, 54)
    make(2, 3, 3, filters=2, size=5, padding_end=2)                  # 3 + 2 = 5: just fits
    with pytest.raises(layers.LayerError) as e:
        make(2, 3, 3, filters=2, size=6, padding_end=2)
    assert e.value.key == "size" and "padding_end 2" in e.value.message


def test_padding_end_finite_differences():
    layer, params, x, _ = setup_padding_end((2, 4, 6, 5, 4, 3, 2, 1, 1, 2, "tanh"), seed=1)
    assert set(gradcheck.check(layer, [x], params)) == {"input0", "weight", "bias"}


def test_padding_end_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    case = PADDING_END_CASES[1]
    n, c, h, w, f, k, s, p, e, g, fn = case
    layer, params, x, rng = setup_padding_end(case, seed=7)
    y = layer.forward(x, params)
    tx = torch.tensor(x, dtype=torch.float64)
    # F.pad takes (left, right, top, bottom)
    xp = torch.nn.functional.pad(tx, (p, p + e, p, p + e))
    ty = torch.tanh(torch.nn.functional.conv2d(xp, torch.tensor(params["weight"], dtype=torch.float64),
                                               torch.tensor(params["bias"], dtype=torch.float64),
                                               stride=s, groups=g))
    close(y, ty.numpy())


@pytest.mark.parametrize("path", ["gemm", "mixed"])
@pytest.mark.parametrize("chunk_images", [1, 2])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=lambda c: "-".join(map(str, c)))
def test_batch_in_chunks_matches_whole_batch(case, chunk_images, path):
    """A batch larger than one chunk goes through the GEMMs in pieces (the last one shorter):
    the same output and gradients as in one piece and as the reference, with repeated
    backward; "mixed" (the direct forward) makes every chunk's columns again in backward."""
    case = (5,) + case[1:]
    whole, params, x, rng = setup_case(case)
    chunked, _, _, _ = setup_case(case)
    whole.use_path(path)
    chunked.use_path(path)
    n, c, h, w = x.shape
    oh, ow = chunked.out_hw
    chunked.CHUNK_BYTES = 4 * c * chunked.size ** 2 * oh * ow * chunk_images
    assert chunked._chunk(n) == chunk_images and whole._chunk(n) == n
    y = chunked.forward(x, params).copy()
    np.testing.assert_allclose(y, whole.forward(x, params), rtol=1e-6, atol=1e-6)
    close(y, reference.forward(x.astype(np.float64), *ref_args(chunked, params)))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = [a.copy() for a in whole.backward(dy, params)[:1]]
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x.astype(np.float64), *ref_args(chunked, params))
    for _ in range(2):
        dx, grads = chunked.backward(dy, params)
        np.testing.assert_allclose(dx, want[0], rtol=1e-5, atol=1e-6)
        close(dx, rdx)
        close(grads["weight"], rdw)
        close(grads["bias"], rdb)
    none, grads = chunked.backward(dy, params, need_dx=False)
    assert none is None
    close(grads["weight"], rdw)
    assert set(chunked._buffers) == set(chunked.buffer_shapes(n, backward=True))
    if case[-1] != "abs":                    # smooth: no kinks for the finite differences
        errs = gradcheck.check(chunked, [x[:3]], params)
        assert set(errs) == {"input0", "weight", "bias"}


@pytest.mark.parametrize("per", [1, 2])
def test_mixed_forward_pads_a_chunk_of_images_at_a_time(per):
    """The mixed path's forward pads and convolves `per` images at a time (its GEMM backward
    reads no phase images): the same bits as all at once, in a smaller workspace, and the
    gradients of the reference."""
    case = (5, 3, 13, 12, 4, 7, 2, 3, 1, "tanh")               # a 7x7 stride-2 RGB stem
    whole, params, x, rng = setup_case(case)
    chunked, _, _, _ = setup_case(case)
    assert whole.direct_forward and chunked.direct_forward and not whole.direct
    chunked.CHUNK_BYTES = 4 * chunked._phase_span() * per
    assert chunked._phase_chunk(5) == per and whole._phase_chunk(5) == 5
    y = chunked.forward(x, params).copy()
    np.testing.assert_array_equal(y, whole.forward(x, params))
    assert chunked._buffers["xpad"].size < whole._buffers["xpad"].size
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = chunked.backward(dy, params)
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x.astype(np.float64), *ref_args(chunked, params))
    close(dx, rdx)
    close(grads["weight"], rdw)
    close(grads["bias"], rdb)
    assert set(chunked._buffers) == set(chunked.buffer_shapes(5, backward=True))


# ---- the direct kernels (no im2col): both paths forced on the same cases ------------------
# (N, C, H, W, filters, size, stride=1, padding, groups, neuron): odd, non-square, padding
# 0/1/2, filter counts that are and are not multiples of the kernels' block of 4
DIRECT_CASES = [
    (3, 4, 7, 6, 5, 3, 1, 1, 1, "tanh"),
    (1, 6, 9, 11, 6, 5, 1, 2, 2, "relu"),
    (2, 3, 5, 8, 7, 2, 1, 0, 1, "abs"),
    (3, 9, 6, 5, 9, 3, 1, 2, 3, "logistic"),
    (2, 2, 8, 9, 8, 4, 1, 1, 2, "linear"),
    (1, 1, 6, 7, 3, 5, 1, 0, 1, None),
    (2, 4, 5, 5, 12, 3, 1, 1, 1, "square"),
    (2, 3, 6, 4, 4, 3, 1, 0, 1, "brelu[1.5]"),
    (2, 3, 6, 7, 4, 3, 1, 1, 1, "softrelu"),
    (2, 3, 6, 7, 4, 3, 1, 1, 1, "sqrt"),
    (3, 7, 5, 19, 13, 3, 1, 1, 1, "relu"),      # rows of 3 runs of 8; 13 filters, 7 channels
    (2, 16, 4, 16, 8, 3, 1, 1, 2, None),        # rows of exactly 2 runs
    # strides: the phase planes (stride^2 of them, or size^2 where the stride is larger)
    (3, 4, 9, 8, 5, 3, 2, 1, 1, "relu"),        # ResNet's 3x3 stride 2
    (2, 6, 8, 9, 6, 1, 2, 0, 2, None),          # its 1x1 stride-2 shortcut: pixels no tap reads
    (2, 3, 13, 12, 4, 7, 2, 3, 1, "tanh"),      # ResNet's 7x7 stride-2 stem
    (2, 3, 11, 10, 7, 5, 3, 2, 1, "abs"),       # 3 phases a side, sub-kernels of 2 and 1
    (1, 3, 19, 17, 4, 11, 4, 2, 1, "relu"),     # AlexNet's 11x11 stride 4
    (2, 4, 7, 7, 4, 2, 3, 1, 2, "logistic"),    # stride 3 > size 2 with padding
    (2, 3, 5, 6, 4, 3, 1, 3, 1, "tanh"),        # padding 3 >= size 3: borders no tap reads
    (3, 5, 20, 21, 9, 3, 2, 1, 1, None),        # rows of 2 runs at stride 2
    (2, 2, 1, 1, 2, 1, 2, 1, 2, "tanh"),        # the one pixel in a phase no tap reads: dx 0
]


def run_path(case, path, seed=0, serial=False):
    from layers import threads
    layer, params, x, rng = setup_case(case, seed)
    if case[-1] == "sqrt":
        params["bias"][:] = np.abs(params["bias"]) + 3.0      # keep sqrt's input positive
    layer.use_path(path)
    with threads.serial(serial):
        y = layer.forward(x, params).copy()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, grads = layer.backward(dy, params)
        dx, grads = dx.copy(), {k: v.copy() for k, v in grads.items()}
    return layer, params, x, y, dy, dx, grads


def check_path(case, path, other):
    """run_path(case, path): its buffers those it declares, y, dx and the gradients the
    reference's and the `other` path's; returns run_path's tuple and the reference's grads."""
    layer, params, x, y, dy, dx, grads = run_path(case, path)
    assert set(layer._buffers) == set(layer.buffer_shapes(x.shape[0], backward=True))
    x64 = x.astype(np.float64)
    close(y, reference.forward(x64, *ref_args(layer, params)))
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x64, *ref_args(layer, params))
    close(dx, rdx)
    close(grads["weight"], rdw)
    close(grads["bias"], rdb)
    _, _, _, oy, _, odx, ograds = run_path(case, other)
    close(y, oy)
    close(dx, odx)
    close(grads["weight"], ograds["weight"])
    return (layer, params, x, y, dy, dx, grads), (rdx, rdw, rdb)


@pytest.mark.parametrize("case", DIRECT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_direct_path_matches_reference_and_gemm_path(case):
    (layer, params, x, y, dy, dx, grads), (rdx, rdw, rdb) = check_path(case, "direct", "gemm")
    assert "cols" not in layer._buffers
    # the direct forward with the GEMM backward (strided RGB stems): the direct path's y
    mixed, _, _, my, _, mdx, mgrads = run_path(case, "mixed")
    assert set(mixed._buffers) == set(mixed.buffer_shapes(x.shape[0], backward=True))
    np.testing.assert_array_equal(my, y)
    close(mdx, rdx)
    close(mgrads["weight"], rdw)
    close(mgrads["bias"], rdb)


def test_direct_cases_run_both_tile_shapes_forward_and_in_dx():
    """The cases above cover both register tiles (6 filters x 2 runs, 4 x 3) on both sides."""
    from layers.conv import TILES
    shapes = [setup_case(case, 0)[0]._tile_shapes() for case in DIRECT_CASES]
    assert {fwd for fwd, _ in shapes} == set(TILES)
    assert {dx for _, dx in shapes} == set(TILES)


@pytest.mark.parametrize("case", [DIRECT_CASES[0], DIRECT_CASES[10], DIRECT_CASES[12]],
                         ids=lambda c: "-".join(map(str, c)))
def test_tile_shapes_give_the_same_bits(case):
    """Each output sums its taps in the same order whichever tile computes it: forcing either
    shape changes which outputs share registers, not one bit of y or dx."""
    from layers.conv import TILES
    results = []
    for shape in TILES:
        layer, params, x, rng = setup_case(case, 0)
        layer.use_path("direct")
        layer._tile_shapes = lambda shape=shape: (shape, shape)
        y = layer.forward(x, params).copy()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, _ = layer.backward(dy, params)
        results.append((y, dx.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_tile_shape_rule_wastes_least():
    from layers.conv import _tile
    assert _tile(16, [112]) == (4, 3)      # 3 blocks of 6 (18 rows) against 4 of 4
    assert _tile(32, [32]) == (4, 3)
    assert _tile(12, [112]) == (6, 2)      # 6 divides it
    assert _tile(64, [7]) == (6, 2)        # 66 x 8 runs < 64 x 9: 7x7 maps' runs come in pairs better
    assert _tile(6, [1, 1]) == (6, 2)      # per phase: 6 x (2 + 2) < 8 x (3 + 3)


@pytest.mark.parametrize("case", DIRECT_CASES[:5], ids=lambda c: "-".join(map(str, c)))
def test_direct_serial_twins_match_parallel_kernels(case):
    *_, y, _, dx, grads = run_path(case, "direct", serial=False)
    *_, sy, _, sdx, sgrads = run_path(case, "direct", serial=True)
    np.testing.assert_allclose(sy, y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sdx, dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sgrads["weight"], grads["weight"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sgrads["bias"], grads["bias"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h, w, p, hp, wc", [(5, 7, 1, 7, 9), (4, 4, 2, 8, 8), (6, 5, 0, 6, 5),
                                             (5, 6, 1, 9, 7), (3, 3, 2, 5, 4), (2, 3, 4, 6, 3)])
@pytest.mark.parametrize("serial", [True, False])
def test_pad_images_at_stride_one_is_the_zero_padded_image(h, w, p, hp, wc, serial):
    """xpad[n, c*hp*wc + i*wc + j] = x[n, c, i - p, j - p], zeros outside x, for rows and
    columns cut short (hp < h + 2p, wc < w + 2p: the last of them past the padding dropped)
    or running on (extra rows, columns)."""
    from layers import threads
    from layers.conv import cpu
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    want = np.zeros((2, 3, max(hp, h + p), max(wc, w + p)), np.float32)
    want[:, :, p:p + h, p:p + w] = x
    xpad = np.full((2, 3 * hp * wc), np.nan, np.float32)
    with threads.serial(serial):
        cpu.pad_images(x, p, 1, 1, hp, wc, xpad)
    np.testing.assert_array_equal(xpad.reshape(2, 3, hp, wc), want[:, :, :hp, :wc])


@pytest.mark.parametrize("h, w, p, hp, wc", [(9, 8, 1, 5, 5), (28, 28, 1, 15, 15), (7, 33, 0, 4, 17),
                                             (12, 12, 3, 9, 9), (6, 9, 2, 5, 4), (5, 6, 1, 3, 3)])
@pytest.mark.parametrize("serial", [True, False])
def test_pad_images_at_stride_two_are_the_phase_images(h, w, p, hp, wc, serial):
    """xpad[n, c*hp*4wc + i*4wc + (py*2 + px)*wc + j] = the zero-padded x at row 2i + py,
    column 2j + px: rows split 16 floats at a time where x's columns fit the phases' wc
    (the first four cases), pixel by pixel where they are cut short (the last two)."""
    from layers import threads
    from layers.conv import cpu
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    padded = np.zeros((2, 3, max(2 * hp, h + p), max(2 * wc, w + p)), np.float32)
    padded[:, :, p:p + h, p:p + w] = x
    want = padded[:, :, :2 * hp, :2 * wc].reshape(2, 3, hp, 2, wc, 2).transpose(0, 1, 2, 3, 5, 4)
    xpad = np.full((2, 3 * hp * 4 * wc), np.nan, np.float32)
    with threads.serial(serial):
        cpu.pad_images(x, p, 2, 2, hp, wc, xpad)
    np.testing.assert_array_equal(xpad, want.reshape(2, -1))


def test_direct_batch_one_large_batch_and_padding_end():
    for case in [(1, 3, 10, 9, 6, 5, 1, 2, 1, "relu"), (37, 3, 6, 5, 6, 3, 1, 1, 3, "tanh")]:
        layer, params, x, y, dy, dx, grads = run_path(case, "direct")
        assert layer.use_direct(*case[1:4], *case[4:9])
        x64 = x.astype(np.float64)
        close(y, reference.forward(x64, *ref_args(layer, params)))
        rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x64, *ref_args(layer, params))
        close(dx, rdx)
        close(grads["weight"], rdw)
        close(grads["bias"], rdb)
    case = (2, 3, 7, 6, 5, 3, 1, 1, 2, 1, "relu")                  # stride 1 with padding_end
    assert check_on_padded_input(case).direct


def test_direct_repeated_backward_and_without_dx():
    layer, params, x, rng = setup_case(DIRECT_CASES[1])
    assert layer.direct
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx1, g1 = layer.backward(dy, params)
    dx1, g1 = dx1.copy(), {k: v.copy() for k, v in g1.items()}
    dx2, g2 = layer.backward(dy, params)
    none, g3 = layer.backward(dy, params, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dx1, dx2)
    for g in (g2, g3):
        np.testing.assert_array_equal(g1["weight"], g["weight"])
        np.testing.assert_array_equal(g1["bias"], g["bias"])


@pytest.mark.parametrize("case", [(2, 3, 16, 16, 5, 5, 1, 2, 1, None),      # CIFAR-10's conv1, smaller
                                  (3, 4, 6, 8, 6, 3, 1, 1, 2, None),        # groups, a row of one run
                                  (2, 2, 9, 24, 7, 3, 1, 1, 1, None),       # 7 filters: a block of 3
                                  (2, 3, 16, 16, 5, 5, 1, 2, 1, "relu"),    # an activation: dz made
                                  (2, 3, 9, 10, 5, 3, 1, 1, 1, None)])      # runs cross the rows' end
def test_direct_weight_gradient_without_dx_reads_dy_where_it_can(case):
    """A first layer (no dx) without an activation and whole runs of 8 outputs a row: dW
    reads dy unpadded (channel_sums for the bias). Its dW is the padded gradient's, bit for bit,
    its bias gradient as close, both the reference's; the other cases keep the padded one."""
    import layers.conv as conv
    layer, params, x, rng = setup_case(case)
    layer.use_path("direct")
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, padded = layer.backward(dy, params)
    padded = {k: v.copy() for k, v in padded.items()}
    calls = []
    original = conv.channel_sums

    def counted(*args):
        calls.append(1)
        return original(*args)

    conv.channel_sums = counted
    try:
        none, plain = layer.backward(dy, params, need_dx=False)
    finally:
        conv.channel_sums = original
    assert none is None
    assert len(calls) == (1 if case[-1] is None and layer.out_hw[1] % 8 == 0 else 0)
    np.testing.assert_array_equal(plain["weight"], padded["weight"])
    close(plain["bias"], padded["bias"])
    x64 = x.astype(np.float64)
    _, rdw, rdb = reference.backward(dy.astype(np.float64), x64, *ref_args(layer, params))
    close(plain["weight"], rdw)
    close(plain["bias"], rdb)


@pytest.mark.parametrize("case", [(2, 4, 6, 5, 6, 3, 1, 1, 2, "tanh"), (2, 3, 5, 6, 5, 3, 1, 0, 1, "tanh")])
def test_direct_gradient_finite_differences(case):
    layer, params, x, _ = setup_case(case, seed=1)
    layer.use_path("direct")
    assert set(gradcheck.check(layer, [x], params)) == {"input0", "weight", "bias"}


def test_selection_rule():
    # the shapes bench/bench_conv.py measures, on the side that won there (for the 3x3 stride-1
    # ones where a batch is large enough, the Winograd path before either: test_conv_winograd)
    assert make(1, 28, 28, filters=6, size=5, padding=2).direct          # LeNet-5 conv1
    assert make(6, 14, 14, filters=16, size=5).direct                    # LeNet-5 conv2
    assert make(16, 28, 28, filters=16, size=3, padding=1).direct        # digits ResNet layer1
    assert make(3, 32, 32, filters=32, size=5, padding=2).direct         # CIFAR-10 conv1, conv2,
    assert make(32, 16, 16, filters=32, size=5, padding=2).direct        # conv3
    assert make(32, 8, 8, filters=64, size=5, padding=2).direct
    assert make(64, 56, 56, filters=64, size=3, padding=1).direct        # ResNet-18 layer1
    assert make(3, 224, 224, filters=64, size=3, padding=1).direct       # VGG-16 conv1_1
    assert not make(64, 224, 224, filters=64, size=3, padding=1).direct  # conv1_2: 13 MB planes
    assert not make(128, 28, 28, filters=128, size=3, padding=1).direct  # ResNet-18 layer2 on
    assert not make(96, 27, 27, filters=256, size=5, padding=2, groups=2).direct
    assert not make(256, 13, 13, filters=384, size=3, padding=1).direct
    assert make(3, 32, 32, filters=8, size=3, padding=3).direct          # padding >= size: borders
    # strides: up to 256 taps and from 6 channels a group
    assert make(16, 28, 28, filters=32, size=3, stride=2, padding=1).direct       # digits ResNet layer2.0
    # 1x1: GEMM, strided or not
    assert not make(16, 28, 28, filters=32, size=1, stride=2).direct              # its shortcut
    assert not make(64, 56, 56, filters=128, size=1, stride=2).direct             # ResNet-18's shortcut
    assert not make(64, 14, 14, filters=256, size=1).direct                       # a bottleneck's
    assert not make(3, 32, 32, filters=8, size=1, stride=2).direct_forward
    assert not make(3, 224, 224, filters=64, size=7, stride=2, padding=3).direct  # its stem: 3 channels
    assert not make(32, 14, 14, filters=64, size=3, stride=2, padding=1).direct   # layer3.0: 288 taps
    assert not make(64, 56, 56, filters=128, size=3, stride=2, padding=1).direct  # ResNet-18 layer2.0
    assert not make(3, 224, 224, filters=48, size=11, stride=4, padding=2).direct  # AlexNet's conv1
    # their forward alone: strided, fewer than 6 channels a group, planes that fit
    assert make(3, 224, 224, filters=64, size=7, stride=2, padding=3).direct_forward    # ResNet-18's stem
    assert make(3, 224, 224, filters=48, size=11, stride=4, padding=2).direct_forward   # AlexNet's conv1
    assert not make(3, 32, 32, filters=32, size=5, padding=2).direct_forward            # stride 1: direct
    assert not make(64, 56, 56, filters=128, size=3, stride=2, padding=1).direct_forward
    assert not make(3, 1200, 1200, filters=8, size=3, stride=2).direct_forward          # 17 MB planes
    with pytest.raises(ValueError, match="gemm, direct, mixed"):
        make(3, 8, 8, filters=4, size=3).use_path("fast")

@pytest.fixture
def latency():
    """threads.latency() on for the test, the threading layer left as it is (workqueue: the
    test process's other tests run on it)."""
    from layers import threads
    threads.set_latency(True, spin=False)
    yield
    threads.set_latency(False)


@pytest.mark.parametrize("case", [(1, 6, 12, 11, 7, 3, 1, 1, 1, "relu"),      # > DIRECT_MAX_TAPS below
                                  (1, 3, 13, 12, 4, 7, 2, 3, 1, None),        # the stem: 3 channels
                                  (1, 8, 9, 9, 6, 3, 2, 1, 2, "tanh")],       # > DIRECT_MAX_STRIDED_TAPS
                         ids=lambda c: "-".join(map(str, c)))
def test_latency_batch_one_runs_direct_where_the_rule_says_gemm(case, latency, monkeypatch):
    """With threads.latency() a batch of 1 takes the direct path wherever the planes fit,
    its kernels parallel (compute_bound), with the GEMM path's numbers; batch 2 keeps the
    rule's path. The tap limits are lowered so that these small shapes fall to GEMM."""
    from layers import threads
    from layers.conv import ConvLayer
    monkeypatch.setattr(ConvLayer, "DIRECT_MAX_TAPS", 40)
    monkeypatch.setattr(ConvLayer, "DIRECT_MAX_STRIDED_TAPS", 20)
    layer, params, x, rng = setup_case(case, 3)
    assert not layer.direct and layer._direct_at(1) and not layer._direct_at(2)
    seen = []
    real = threads.runs_serial
    monkeypatch.setattr(threads, "runs_serial", lambda args: seen.append(real(args)) or seen[-1])
    y = layer.forward(x, params).copy()
    assert layer._on_direct and "cols" not in layer._buffers and seen and not any(seen)   # parallel
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    dx, grads = dx.copy(), {k: v.copy() for k, v in grads.items()}
    x64 = x.astype(np.float64)
    close(y, reference.forward(x64, *ref_args(layer, params)))
    threads.set_latency(False)
    gemm, _, _, _ = setup_case(case, 3)
    gemm.use_path("gemm")                                # (the stems' rule: direct forward)
    gy = gemm.forward(x, params)
    assert not gemm._on_direct and "cols" in gemm._buffers
    close(y, gy)
    gdx, ggrads = gemm.backward(dy, params)
    close(dx, gdx)
    close(grads["weight"], ggrads["weight"])
    close(grads["bias"], ggrads["bias"])
    threads.set_latency(True, spin=False)
    x2 = np.concatenate([x, x])
    layer.forward(x2, params)
    assert not layer._on_direct                          # batch 2: the rule's path


def test_latency_keeps_planes_too_large_for_direct_on_gemm(latency):
    layer = make(64, 224, 224, filters=8, size=3, padding=1)     # VGG-16 conv1_2's 13 MB planes
    assert not layer.direct and not layer._direct_at(1)


def test_compute_bound_runs_parallel_except_in_serial_threads():
    from layers import threads
    small = (np.zeros(4, np.float32),)
    assert threads.runs_serial(small)
    with threads.compute_bound():
        assert not threads.runs_serial(small)
        with threads.serial():
            assert threads.runs_serial(small)
    with threads.serial(), threads.compute_bound():
        assert threads.runs_serial(small)                # a column's thread stays serial
    assert threads.runs_serial(small)
