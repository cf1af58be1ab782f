import numpy as np
import pytest
from helpers import distinct

import layers
from engine import gradcheck
from layers.base import out_size_ceil
from layers.pool import reference

# (size, stride, input C x H x W): non-square; windows overhang the bottom and/or right edge
CASES = [
    (2, 2, (4, 11, 8)),    # 11 -> 6: last row window is 10..11, clipped to one row
    (3, 2, (3, 10, 7)),    # 10 -> 5: last window 8..10 clipped to two rows; 7 -> 3 exact
    (3, 3, (2, 8, 13)),    # 8 -> 3 (6..8 clipped), 13 -> 5 (12..14 clipped to one column)
    (2, 1, (2, 5, 6)),     # overlapping, stride 1: no overhang
    (3, 1, (3, 6, 5)),
]


def make(mode, size, stride=None, neuron=None, shape=(3, 10, 7)):
    cfg = {"mode": mode, "size": size, "neuron": neuron}
    if stride is not None:
        cfg["stride"] = stride
    return layers.get("pool")("pool", cfg, [shape])


def test_cases_overhang():
    # the cases above really exercise clipped windows at the edge
    clipped = [(s, st, shp) for s, st, shp in CASES
               if any((out_size_ceil(v, s, st) - 1) * st + s > v for v in shp[1:])]
    assert len(clipped) >= 3


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,shape", CASES)
@pytest.mark.parametrize("n", [1, 3])
def test_forward_backward_match_reference(mode, size, stride, shape, n):
    rng = np.random.default_rng(n * 10 + size)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    layer = make(mode, size, stride, shape=shape)
    y = layer.forward(x, {})
    assert y.shape == (n,) + layer.output_shape
    np.testing.assert_allclose(y, reference.forward(x, mode, size, stride), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(g, {})
    assert grads == {}
    np.testing.assert_allclose(dx, reference.backward(x, g, mode, size, stride), rtol=1e-5, atol=1e-6)


# every neuron function, with parameters where it takes them (bare tanh / linear: tanh[1,1], ident)
NEURONS = ["ident", "relu", "tanh", "linear", "linear[0.5,-1]", "brelu[0.5]", "tanh[1.7,0.66]",
           "logistic", "softrelu", "abs", "square", "sqrt"]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("neuron", NEURONS)
def test_fused_neuron_matches_reference(mode, neuron):
    rng = np.random.default_rng(7)
    shape = (3, 11, 8)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    if neuron == "sqrt":          # its domain (NaN below 0 is the neuron tests' business)
        x = np.abs(x) + np.float32(0.1)
    layer = make(mode, 3, 2, neuron, shape)
    y = layer.forward(x, {})
    np.testing.assert_allclose(y, reference.forward(x, mode, 3, 2, neuron), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = layer.backward(g, {})
    np.testing.assert_allclose(dx, reference.backward(x, g, mode, 3, 2, neuron), rtol=1e-5, atol=1e-6)
    # the activation comes after pooling: relu(avg) differs from avg(relu) on mixed-sign windows
    if mode == "avg" and neuron == "relu":
        assert not np.allclose(y, reference.forward(np.maximum(x, 0), mode, 3, 2))


def test_max_ties_go_to_first_element():
    # every window of a constant plane is a tie: only its first element (row-major) gets g
    x = np.zeros((1, 1, 5, 5), np.float32)
    layer = make("max", 3, 2, shape=(1, 5, 5))
    layer.forward(x, {})
    g = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    dx, _ = layer.backward(g, {})
    expect = np.zeros((5, 5), np.float32)
    expect[0, 0], expect[0, 2], expect[2, 0], expect[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expect)
    # a tie inside one window between (0, 1) and (1, 0): row-major order picks (0, 1)
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 1.0
    layer = make("max", 2, shape=(1, 2, 2))
    layer.forward(x, {})
    dx, _ = layer.backward(np.ones((1, 1, 1, 1), np.float32), {})
    np.testing.assert_array_equal(dx[0, 0], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(dx, reference.backward(x, np.ones((1, 1, 1, 1), np.float32), "max", 2))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,neuron", [(3, 2, None), (2, 2, "relu"), (3, 3, "tanh"),
                                                 (2, 1, "abs")])
def test_gradient_finite_differences(mode, size, stride, neuron):
    shape = (2, 7, 6)
    x = distinct((2,) + shape, seed=size)
    gradcheck.check(make(mode, size, stride, neuron, shape), [x])


@pytest.mark.parametrize("mode,neuron", [("max", "brelu[6]"), ("avg", "tanh[1.7,0.66]"),
                                        ("max", "square"), ("avg", "softrelu"),
                                        ("max", "linear[0.5,-1]")])
def test_parametrised_neuron_finite_differences(mode, neuron):
    shape = (2, 7, 6)
    x = distinct((2,) + shape, seed=5)           # spans +-8.4: brelu[6] clips some windows
    layer = make(mode, 3, 2, neuron, shape)
    if neuron == "brelu[6]":
        y = layer.forward(x, {})
        assert (y == 6).any() and ((y > 0) & (y < 6)).any()
    gradcheck.check(layer, [x])


@pytest.mark.parametrize("mode,neuron", [("max", None), ("avg", None), ("max", "tanh"), ("avg", "logistic"),
                                        ("max", "tanh[1.7,0.66]"), ("avg", "brelu[1]")])
def test_reference_gradient_float64(mode, neuron):
    # the reference itself, in float64, against central differences at every input
    x = distinct((1, 2, 5, 4), seed=3).astype(np.float64)
    g = np.random.default_rng(4).standard_normal(reference.forward(x, mode, 3, 2).shape)
    h = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (np.sum(g * reference.forward(xp, mode, 3, 2, neuron))
                    - np.sum(g * reference.forward(xm, mode, 3, 2, neuron))) / (2 * h)
    np.testing.assert_allclose(reference.backward(x, g, mode, 3, 2, neuron), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("side,size,stride,out", [(55, 3, 2, 27), (32, 3, 2, 16), (13, 3, 2, 6),
                                                  (28, 2, 2, 14), (24, 3, 2, 12), (5, 3, 3, 2)])
def test_output_size_rule(side, size, stride, out):
    assert out_size_ceil(side, size, stride) == out
    layer = make("max", size, stride, shape=(3, side, 9))
    assert layer.output_shape == (3, out, out_size_ceil(9, size, stride))


def test_stride_defaults_to_size():
    layer = make("avg", 3, shape=(2, 13, 9))
    assert layer.stride == 3
    assert layer.output_shape == (2, 5, 3)        # ceil(10/3)+1, ceil(6/3)+1


def test_macs_counts_window_reads():
    assert make("max", 2, 2, shape=(3, 4, 6)).macs() == 3 * 4 * 6
    # 5 -> 2 windows of 3 and 1 rows (rows 0..2 and 3..4 clipped to 2): 3 + 2
    assert make("avg", 3, 3, shape=(1, 5, 5)).macs() == 5 * 5


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 9, 4), (3, 4, 9)])
def test_window_larger_than_input(shape):
    with pytest.raises(layers.LayerError) as e:
        make("max", 5, 2, shape=shape)
    assert e.value.key == "size"
    assert e.value.message == f"pool window 5 larger than input {shape[1]}x{shape[2]}"


def test_stride_larger_than_window():
    with pytest.raises(layers.LayerError) as e:
        make("avg", 2, 3, shape=(3, 8, 8))
    assert e.value.key == "stride"
    assert "stride 3 larger than the window 2" in e.value.message
    assert "skip" in e.value.message


def test_bad_mode_key():
    with pytest.raises(layers.LayerError) as e:
        layers.get("pool").keys["mode"].check("mode", "sum")
    assert e.value.key == "mode" and "max|avg" in e.value.message


def test_against_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    for size, stride, shape in CASES + [(3, 2, (4, 55, 32))]:
        x = rng.standard_normal((3,) + shape).astype(np.float32)
        for mode in ("max", "avg"):
            layer = make(mode, size, stride, shape=shape)
            y = layer.forward(x, {})
            g = rng.standard_normal(y.shape).astype(np.float32)
            dx, _ = layer.backward(g, {})
            xt = torch.tensor(x, requires_grad=True)
            if mode == "max":
                yt = F.max_pool2d(xt, size, stride, ceil_mode=True)
            else:
                # padding 0: torch divides a clipped window by its in-bounds count, with
                # or without count_include_pad
                yt = F.avg_pool2d(xt, size, stride, ceil_mode=True)
                yt2 = F.avg_pool2d(xt, size, stride, ceil_mode=True, count_include_pad=False)
                # the definition itself, from torch ops: window sum / in-bounds count
                ones = torch.ones((1, 1) + shape[1:])
                ysum = F.avg_pool2d(xt, size, stride, ceil_mode=True, divisor_override=1)
                count = F.avg_pool2d(ones, size, stride, ceil_mode=True, divisor_override=1)
                np.testing.assert_allclose(y, yt2.detach().numpy(), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(y, (ysum / count).detach().numpy(), rtol=1e-5, atol=1e-6)
            assert tuple(yt.shape) == y.shape
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
            yt.backward(torch.tensor(g))
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,stride,shape", CASES + [(3, 2, (5, 55, 41)), (4, 3, (2, 9, 30))])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("neuron", [None, "relu", "abs"])
def test_max_serial_twin_matches_parallel_and_reference_with_ties(size, stride, shape, n, neuron):
    """Many ties (small integers): the first maximum in row-major order wins in both the
    parallel kernel and its serial twin (column mode), as in the reference."""
    from layers import threads
    rng = np.random.default_rng(size * 7 + n)
    x = rng.integers(-2, 3, (n,) + shape).astype(np.float32)
    out = []
    for serial in (False, True):
        layer = make("max", size, stride, neuron, shape)
        with threads.serial(serial):
            y = layer.forward(x, {}).copy()
            g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
            dx, _ = layer.backward(g, {})
        out.append((y, dx.copy()))
        np.testing.assert_array_equal(y, reference.forward(x, "max", size, stride, neuron))
        np.testing.assert_allclose(dx, reference.backward(x, g, "max", size, stride, neuron), atol=1e-6)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# (count, cells): 8 whole windows (the unmasked run), fewer whole ones, and the last cut by
# the row's end (its cells from `cells` on lie past it)
RUNS = [(8, None), (8, 17), (5, 11), (3, 6), (1, 2), (8, 16)]


def _run_kernel(kind, size, masked):
    """layers.pool.cpu's max_run3, sum_part2, ... (`kind`, windows `size` wide, masked or
    not) in a function Python can call (an intrinsic runs inside compiled code only)."""
    import numba
    from layers.pool import cpu
    run = getattr(cpu, f"{kind}_{'part' if masked else 'run'}{size}")
    return numba.njit(lambda *args: run(*args))


def _run_case(size, rows, count, cells, seed):
    """A row-major x of 8 rows of 40, +inf outside the windows' cells (or past `cells`), and
    the windows' cells (rows, count, size) as NumPy sees them (nan where cut)."""
    rng = np.random.default_rng(seed)
    width, start = 40, 3 * 40 + 5
    x = np.full(8 * width, np.inf, np.float32)
    span = 2 * (count - 1) + size if cells is None else min(cells, 2 * (count - 1) + size)
    for r in range(rows):
        x[start + r * width:start + r * width + span] = rng.integers(-2, 3, span)
    planes = x.reshape(8, width)
    wins = np.full((rows, count, size), np.nan, np.float32)
    for lane in range(count):
        for q in range(size):
            if 2 * lane + q < span:
                wins[:, lane, q] = planes[3:3 + rows, 5 + 2 * lane + q]
    return x, width, start, wins


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("count,cells", RUNS)
def test_max_run_is_the_windows_first_maximum(size, rows, count, cells):
    """max_run / max_part against NumPy: `count` windows `size` wide at stride 2, `rows`
    high, ties (small integers) going to the row-major first cell; every cell outside the
    windows is +inf, so a read of one would win a window; nothing past the count written."""
    masked = cells is not None
    call = _run_kernel("max", size, masked)

    x, width, start, wins = _run_case(size, rows, count, cells, size * 10 + rows + count)
    y = np.full(12, -7.0, np.float32)
    arg = np.full(12, -7, np.int32)
    call(x, start, rows, width, count, cells or 0, 1000, y, 2, arg, 3)
    for lane in range(count):
        win = np.where(np.isnan(wins[:, lane]), -np.inf, wins[:, lane])
        first = int(np.argmax(win))                       # row-major first maximum
        r, q = divmod(first, size)
        assert y[2 + lane] == win.max()
        assert arg[3 + lane] == 1000 + r * width + 2 * lane + q
    assert (y[:2] == -7).all() and (y[2 + count:] == -7).all()
    assert (arg[:3] == -7).all() and (arg[3 + count:] == -7).all()


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("count,cells", RUNS)
def test_sum_run_is_the_windows_scaled_sums(size, rows, count, cells):
    """sum_run / sum_part against NumPy: each window's cells (those before `cells`) summed,
    times `div` for the first `whole`, `edge` after; nothing past the count written (the
    +inf around the windows would show in a sum that read them)."""
    masked = cells is not None
    call = _run_kernel("sum", size, masked)

    x, width, start, wins = _run_case(size, rows, count, cells, size * 10 + rows + count)
    whole = count - 1 if masked else count
    y = np.full(12, -7.0, np.float32)
    call(x, start, rows, width, count, cells or 0, whole, np.float32(0.25), np.float32(0.5), y, 2)
    sums = np.nansum(wins, axis=(0, 2))
    expected = sums * np.where(np.arange(count) < whole, 0.25, 0.5)
    np.testing.assert_array_equal(y[2:2 + count], expected.astype(np.float32))
    assert (y[:2] == -7).all() and (y[2 + count:] == -7).all()


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("count,cells", RUNS)
def test_spread_run_adds_each_share_to_its_window(size, rows, count, cells):
    """spread_run / spread_part against NumPy: g[l] added to each cell of window l (cells
    two windows share get both), only to the cells before `cells`; no other cell changes."""
    masked = cells is not None
    call = _run_kernel("spread", size, masked)

    rng = np.random.default_rng(size + rows + count)
    g = rng.integers(1, 9, 12).astype(np.float32)
    width, start = 40, 3 * 40 + 5
    dx = rng.integers(-5, 5, 8 * width).astype(np.float32)
    expected = dx.copy().reshape(8, width)
    span = 2 * (count - 1) + size if cells is None else min(cells, 2 * (count - 1) + size)
    for lane in range(count):
        for q in range(size):
            if 2 * lane + q < span:
                expected[3:3 + rows, 5 + 2 * lane + q] += g[2 + lane]
    call(g, 2, dx, start, rows, width, count, cells or 0)
    np.testing.assert_array_equal(dx.reshape(8, width), expected)


# (size, C x H x W, padding): rows of whole windows 8 or more wide, runs of 8 overlapping
# where 8 does not divide them, windows cut at the right and bottom edges and by padding
@pytest.mark.parametrize("size,shape,padding", [(3, (3, 9, 17), 0), (3, (2, 10, 40), 0), (3, (2, 12, 33), 1),
                                                (2, (3, 7, 34), 0), (2, (2, 9, 33), 1)])
@pytest.mark.parametrize("neuron", [None, "relu", "abs"])
def test_max_rows_of_eight_windows_match_reference(size, shape, padding, neuron):
    """The pool's rows of whole windows run 8 at a time (max_run): y, the pre-activation
    (abs) and the argmax, through dx, as the reference's, ties (small integers) included;
    the serial twin and the parallel kernel alike."""
    from layers import threads
    rng = np.random.default_rng(size + padding)
    x = rng.integers(-3, 4, (2,) + shape).astype(np.float32)
    for serial in (False, True):
        layer = layers.get("pool")("pool", {"mode": "max", "size": size, "stride": 2, "padding": padding,
                                            "neuron": neuron}, [shape])
        with threads.serial(serial):
            y = layer.forward(x, {})
            np.testing.assert_array_equal(y, reference.forward(x, "max", size, 2, neuron, padding=padding))
            g = rng.standard_normal(y.shape).astype(np.float32)
            dx, _ = layer.backward(g, {})
        np.testing.assert_allclose(dx, reference.backward(x, g, "max", size, 2, neuron, padding=padding), atol=1e-6)
