"""conv and fc on CUDA (the simulator in CI) give the CPU layers' numbers; the GEMM gives numpy's.

Shapes are tiny and odd (the simulator runs every CUDA thread as a Python thread):
GEMM sizes that are not multiples of the tile, both transposes, batches, split-K and
beta; conv with stride, padding, groups, non-square inputs, batch 1 and 2, fused relu,
abs, tanh, logistic and linear; fc likewise.
"""
import numpy as np
import pytest
from helpers import close, host, to_dev
from numba import cuda

import layers
import layers.conv.cuda as conv_cuda
import layers.cudagemm as cg
import layers.fc.cuda as fc_cuda


def scratch(shape):
    return cuda.device_array(shape, np.float32)


# ---- GEMM alone ----------------------------------------------------------------------------
# (m, n, k, trans_a, trans_b, batch, splits, alpha, beta)
GEMM_CASES = [
    (37, 45, 29, False, False, 1, 1, 1.0, 0.0),     # one partial tile, two k tiles
    (70, 3, 17, True, False, 1, 1, 1.0, 0.0),       # two row tiles, A transposed
    (3, 66, 40, False, True, 1, 1, 1.0, 0.0),       # two column tiles, B transposed
    (5, 20, 33, True, True, 2, 2, 0.5, 2.0),        # batch 2, split-K, alpha and beta
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gemm_matches_numpy(case, stream):
    m, n, k, ta, tb, batch, splits, alpha, beta = case
    rng = np.random.default_rng(1)
    a = rng.standard_normal((batch, k, m) if ta else (batch, m, k)).astype(np.float32)
    b = rng.standard_normal((batch, n, k) if tb else (batch, k, n)).astype(np.float32)
    c = rng.standard_normal((batch, m, n)).astype(np.float32)
    if beta == 0.0:
        c[:] = np.nan      # beta 0: C's old contents must not be read
    dc = to_dev(c)
    cg.gemm(stream, m, n, k, to_dev(a), to_dev(b), dc, trans_a=ta, trans_b=tb,
            batch=batch, stride_a=m * k, stride_b=k * n, stride_c=m * n,
            alpha=alpha, beta=beta, splits=splits, scratch=scratch)
    stream.synchronize()
    opa = a.transpose(0, 2, 1) if ta else a
    opb = b.transpose(0, 2, 1) if tb else b
    want = alpha * (opa.astype(np.float64) @ opb)
    if beta != 0.0:
        want += beta * c
    close(host(dc), want)


def test_gemm_offsets_and_leading_dimensions(stream):
    """A sub-block of bigger matrices: offsets and lda/ldb/ldc larger than the extents."""
    rng = np.random.default_rng(2)
    big_a = rng.standard_normal((9, 12)).astype(np.float32)
    big_b = rng.standard_normal((10, 11)).astype(np.float32)
    big_c = rng.standard_normal((8, 13)).astype(np.float32)
    m, n, k = 5, 7, 6
    dc = to_dev(big_c)
    # A = big_a[2:2+m, 3:3+k], B = big_b[1:1+k, 4:4+n], C = big_c[1:1+m, 2:2+n]
    cg.gemm(stream, m, n, k, to_dev(big_a), to_dev(big_b), dc, lda=12, ldb=11, ldc=13,
            off_a=2 * 12 + 3, off_b=1 * 11 + 4, off_c=1 * 13 + 2)
    stream.synchronize()
    want = big_c.copy()
    want[1:1 + m, 2:2 + n] = big_a[2:2 + m, 3:3 + k] @ big_b[1:1 + k, 4:4 + n]
    close(host(dc), want)


def test_gemm_rejects_out_of_bounds(stream):
    with pytest.raises(ValueError, match="operand B"):
        cg.gemm(stream, 2, 3, 4, to_dev(np.zeros(8)), to_dev(np.zeros(11)), to_dev(np.zeros(6)))


def test_plan_splits_only_for_long_thin_products():
    assert cg.plan_splits(4096, 4096, 9216) == 1               # plenty of tiles
    assert cg.plan_splits(48, 363, 387200, batch=2) > 1        # conv1 dW: 12 tiles, huge k
    assert cg.plan_splits(48, 363, 300, batch=2) == 1          # short k: not worth it


# ---- conv ----------------------------------------------------------------------------------
# (N, C, H, W, filters, size, stride, padding, groups, neuron)
CONV_CASES = [
    (2, 4, 7, 6, 4, 3, 2, 1, 2, "relu"),        # stride 2, padding 1, groups 2, non-square
    (1, 3, 5, 8, 2, 3, 1, 1, 1, "abs"),         # batch 1, abs keeps the pre-activation
    (2, 2, 6, 5, 3, 2, 3, 0, 1, "tanh"),        # stride > size: pixels no output reads
    (1, 6, 5, 4, 3, 3, 2, 2, 3, "logistic"),    # three groups, padding 2
    (2, 2, 4, 5, 2, 1, 1, 0, 1, None),          # 1x1 kernel, linear
]


def conv_setup(case, seed=0):
    n, c, h, w, f, k, s, p, g, fn = case
    rng = np.random.default_rng(seed)
    layer = layers.get("conv")("conv", dict(filters=f, size=k, stride=s, padding=p, groups=g,
                                            neuron=fn, init_w=0.3), [(c, h, w)])
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(f)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n,) + layer.output_shape).astype(np.float32)
    return layer, params, x, dy


def run_both(layer, params, x, dy, module, stream, need_dx=True):
    y_cpu = layer.forward(x, params).copy()
    dx_cpu, g_cpu = layer.backward(dy, params, need_dx)
    g_cpu = {k: v.copy() for k, v in g_cpu.items()}
    dx_cpu = None if dx_cpu is None else dx_cpu.copy()
    impl = module.make(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    y = impl.forward(to_dev(x), dparams, True, 0, stream)
    dx, grads = impl.backward(to_dev(dy), dparams, need_dx, stream)
    stream.synchronize()
    return (y_cpu, dx_cpu, g_cpu), (host(y), None if dx is None else host(dx),
                                    {k: host(v) for k, v in grads.items()}), impl, dparams


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv_matches_cpu(case, stream):
    layer, params, x, dy = conv_setup(case)
    (y0, dx0, g0), (y1, dx1, g1), _, _ = run_both(layer, params, x, dy, conv_cuda, stream)
    assert y1.shape == y0.shape and dx1.shape == dx0.shape
    close(y1, y0)
    close(dx1, dx0)
    close(g1["weight"], g0["weight"])
    close(g1["bias"], g0["bias"])


def test_conv_split_k_weight_gradient(stream, monkeypatch):
    """Force the split-K path of dW (on a GPU it runs for long N*OH*OW)."""
    monkeypatch.setattr(cg, "MIN_SPLIT_K", 8)
    layer, params, x, dy = conv_setup(CONV_CASES[0], seed=3)
    assert cg.plan_splits(2, 18, 24, batch=2) > 1
    (_, _, g0), (_, _, g1), _, _ = run_both(layer, params, x, dy, conv_cuda, stream, need_dx=False)
    close(g1["weight"], g0["weight"])
    close(g1["bias"], g0["bias"])


def test_conv_without_dx_then_repeated_backward(stream):
    """need_dx=False skips dcols; a second backward after dx recomputes the clobbered cols."""
    layer, params, x, dy = conv_setup(CONV_CASES[1], seed=4)
    (_, dx0, g0), (_, dx1, g1), impl, dparams = run_both(layer, params, x, dy, conv_cuda, stream,
                                                         need_dx=False)
    assert dx1 is None
    close(g1["weight"], g0["weight"])
    ddy = to_dev(dy)
    first = impl.backward(ddy, dparams, True, stream)        # cols -> dcols
    dx_a, dw_a = host(first[0]).copy(), host(first[1]["weight"]).copy()
    second = impl.backward(ddy, dparams, True, stream)       # cols must be rebuilt first
    stream.synchronize()
    dx_cpu, g_cpu = layer.backward(dy, params, True)
    close(dx_a, dx_cpu)
    close(host(second[0]), dx_cpu)
    close(dw_a, g_cpu["weight"])
    close(host(second[1]["weight"]), g_cpu["weight"])


# ---- fc ------------------------------------------------------------------------------------
# (N, D, outputs, neuron)
FC_CASES = [
    (2, 37, 70, "relu"),      # two column tiles, partial k tile
    (1, 20, 5, "abs"),        # batch 1, abs keeps the pre-activation
    (3, 65, 9, None),         # k spans five tiles, linear with a bias
    (2, 11, 6, "logistic"),
]


def fc_setup(case, seed=0, input_shape=None):
    n, d, m, fn = case
    rng = np.random.default_rng(seed)
    layer = layers.get("fc")("fc", dict(outputs=m, neuron=fn, init_w=0.3), [input_shape or (d,)])
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(m)
    x = rng.standard_normal((n,) + tuple(input_shape or (d,))).astype(np.float32)
    dy = rng.standard_normal((n, m)).astype(np.float32)
    return layer, params, x, dy


@pytest.mark.parametrize("case", FC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_fc_matches_cpu(case, stream):
    layer, params, x, dy = fc_setup(case)
    (y0, dx0, g0), (y1, dx1, g1), _, _ = run_both(layer, params, x, dy, fc_cuda, stream)
    close(y1, y0)
    close(dx1, dx0)
    close(g1["weight"], g0["weight"])
    close(g1["bias"], g0["bias"])


def test_fc_spatial_input_split_k_and_no_dx(stream, monkeypatch):
    """A [C, H, W] input is flattened; the forward product takes the split-K path."""
    monkeypatch.setattr(cg, "MIN_SPLIT_K", 16)
    layer, params, x, dy = fc_setup((2, 36, 4, "tanh"), seed=5, input_shape=(4, 3, 3))
    assert cg.plan_splits(2, 4, 36) > 1
    x_flat = x.reshape(2, -1)
    (y0, _, g0), (y1, dx1, g1), _, _ = run_both(layer, params, x_flat, dy, fc_cuda, stream,
                                                need_dx=False)
    assert dx1 is None
    close(y1, y0)
    close(g1["weight"], g0["weight"])
    close(g1["bias"], g0["bias"])
    impl = fc_cuda.make(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    y4 = impl.forward(to_dev(x), dparams, False, 0, stream)     # 4-D device input
    stream.synchronize()
    close(host(y4), y0)


# ---- conv padding_end (cuda-convnet's output rule): zeros read past the bottom/right edge ----
@pytest.mark.parametrize("case", [(2, 2, 5, 5, 2, 3, 2, 0, 2, 1, "relu"),     # 3x3 outputs, floor: 2x2
                                  (1, 4, 5, 6, 4, 2, 3, 1, 1, 2, "tanh")],    # stride > size, groups
                         ids=lambda c: "-".join(map(str, c)))
def test_conv_padding_end_matches_cpu(case, stream):
    n, c, h, w, f, k, s, p, e, g, fn = case
    rng = np.random.default_rng(6)
    layer = layers.get("conv")("conv", dict(filters=f, size=k, stride=s, padding=p, padding_end=e,
                                            groups=g, neuron=fn, init_w=0.3), [(c, h, w)])
    floor_rule = layers.get("conv")("conv", dict(filters=f, size=k, stride=s, padding=p, groups=g),
                                    [(c, h, w)])
    assert layer.output_shape[1] == floor_rule.output_shape[1] + 1     # one more row read past the edge
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(f)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n,) + layer.output_shape).astype(np.float32)
    (y0, dx0, g0), (y1, dx1, g1), _, _ = run_both(layer, params, x, dy, conv_cuda, stream)
    close(y1, y0)
    close(dx1, dx0)
    close(g1["weight"], g0["weight"])
    close(g1["bias"], g0["bias"])
