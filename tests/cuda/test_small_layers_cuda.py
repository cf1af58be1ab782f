"""pool, cmrnorm, rnorm, neuron, dropout and softmax on CUDA (the simulator in CI): the same
numbers as the CPU layers, forward and backward.

Tiny odd shapes, because the simulator runs every CUDA thread as a Python thread.
Dropout's mask comes from a counter-based hash (the CPU's too: test_dropout_keyed_cuda.py),
tested here for its own properties and against the NumPy definition of the hash.
"""
import numpy as np
import pytest
from helpers import OnDevice, close_abs as close, cuda_impl, distinct, host, to_dev

import layers
from engine import gradcheck
from layers.dropout import reference as dropout_ref

FNS = ["linear", "relu", "tanh", "logistic", "abs"]
# every function, with and without its parameters (edge values: test_neuron_sum2_cuda.py)
NEURONS = FNS + ["ident", "linear[2.5,-0.5]", "brelu[1.5]", "tanh[1.7159,0.6667]", "softrelu",
                 "square", "sqrt"]


def cpu_layer(type_name, cfg, shape):
    return layers.get(type_name)(type_name, cfg, [tuple(shape)])


def both(layer, x, g, stream, rtol=1e-5, atol=1e-6):
    """Forward and backward on the CPU layer and its CUDA twin; compare."""
    y_cpu = layer.forward(x, {}).copy()
    dx_cpu, grads = layer.backward(g, {})
    dx_cpu = dx_cpu.copy()
    impl = cuda_impl(layer)
    y_dev = impl.forward(to_dev(x), {}, False, 0, stream)
    dx_dev, dgrads = impl.backward(to_dev(g), {}, True, stream)
    assert grads == {} and dgrads == {}
    stream.synchronize()
    close(host(y_dev), y_cpu, rtol, atol)
    close(host(dx_dev), dx_cpu, rtol, atol)
    return impl


# ---- pool ------------------------------------------------------------------------------
# (size, stride, C x H x W): windows overhang the bottom and right edges in the first three
POOL_CASES = [
    (3, 2, (3, 5, 7)),     # 5 -> 2, 7 -> 3: exact; overlapping windows
    (2, 2, (3, 5, 7)),     # 5 -> 3 (last row clipped), 7 -> 4 (last column clipped)
    (3, 3, (2, 5, 7)),     # 5 -> 2 (3..5 clipped), 7 -> 3 (6..8 clipped)
    (3, 1, (2, 5, 6)),     # stride 1: every input in up to 9 windows
    (2, 1, (3, 4, 5)),
]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,shape", POOL_CASES)
def test_pool_matches_cpu(mode, size, stride, shape, stream):
    layer = cpu_layer("pool", {"mode": mode, "size": size, "stride": stride}, shape)
    x = distinct((2,) + shape, seed=size * 10 + stride)
    g = np.random.default_rng(1).standard_normal((2,) + layer.output_shape).astype(np.float32)
    both(layer, x, g, stream)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("fn", NEURONS)
def test_pool_fused_neuron_matches_cpu(mode, fn, stream):
    shape = (3, 5, 7)
    layer = cpu_layer("pool", {"mode": mode, "size": 3, "stride": 2, "neuron": fn}, shape)
    x = distinct((2,) + shape, seed=3)
    if fn == "sqrt":
        x = np.abs(x)
    g = np.random.default_rng(2).standard_normal((2,) + layer.output_shape).astype(np.float32)
    both(layer, x, g, stream)


@pytest.mark.parametrize("mode,fn", [("max", "brelu[1.5]"), ("avg", "tanh[1.7159,0.6667]"),
                                     ("max", "square")])
def test_pool_finite_differences_on_the_device(mode, fn, stream):
    shape = (2, 5, 5)
    layer = cpu_layer("pool", {"mode": mode, "size": 3, "stride": 2, "neuron": fn}, shape)
    x = distinct((1,) + shape, seed=6, gap=0.2)         # spans +-5: brelu[1.5] clips some
    gradcheck.check(OnDevice(layer, stream), [x], samples=8)


def test_max_pool_ties_send_the_gradient_to_the_first_maximum(stream):
    # values in {0, 1, 2}: most windows hold several equal maxima
    shape = (2, 5, 7)
    layer = cpu_layer("pool", {"mode": "max", "size": 3, "stride": 2}, shape)
    x = np.random.default_rng(4).integers(0, 3, (2,) + shape).astype(np.float32)
    g = np.random.default_rng(5).standard_normal((2,) + layer.output_shape).astype(np.float32)
    impl = both(layer, x, g, stream)
    # every window's gradient lands on exactly one input
    dx = host(impl.backward(to_dev(np.ones_like(g)), {}, True, stream)[0])
    assert np.count_nonzero(dx) <= g.size and dx.sum() == pytest.approx(g.size)


def test_pool_backward_accepts_a_flat_gradient(stream):
    # the next layer (fc, softmax) hands back dy as [N, C*OH*OW]
    shape = (2, 5, 7)
    layer = cpu_layer("pool", {"mode": "avg", "size": 2}, shape)
    x = distinct((2,) + shape)
    g = np.random.default_rng(6).standard_normal((2,) + layer.output_shape).astype(np.float32)
    impl = cuda_impl(layer)
    impl.forward(to_dev(x), {}, False, 0, stream)
    dx_flat = host(impl.backward(to_dev(g.reshape(2, -1)), {}, True, stream)[0])
    layer.forward(x, {})
    close(dx_flat, layer.backward(g, {})[0])


# ---- cmrnorm ------------------------------------------------------------------------------
@pytest.mark.parametrize("size,groups,beta", [
    (3, 1, 0.75), (2, 1, 0.5), (5, 1, 1.0), (4, 1, 0.6),    # the fast paths and powf
    (2, 2, 0.75), (3, 2, 0.6), (2, 3, 0.75),
])
def test_cmrnorm_matches_cpu(size, groups, beta, stream):
    shape = (6, 3, 5)
    layer = cpu_layer("cmrnorm", {"size": size, "groups": groups, "alpha": 1.5, "beta": beta,
                                  "k": 1.0}, shape)
    rng = np.random.default_rng(size * 10 + groups)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    g = rng.standard_normal((2,) + shape).astype(np.float32)
    both(layer, x, g, stream, rtol=2e-5, atol=2e-6)


def test_cmrnorm_groups_normalise_each_block_alone(stream):
    # groups: 2 on 6 maps is two independent 3-map layers
    shape = (6, 3, 5)
    x = np.random.default_rng(7).standard_normal((2,) + shape).astype(np.float32)
    cfg = {"size": 3, "alpha": 1.5, "k": 1.0}
    grouped = cuda_impl(cpu_layer("cmrnorm", dict(cfg, groups=2), shape))
    half = cuda_impl(cpu_layer("cmrnorm", cfg, (3, 3, 5)))
    y = host(grouped.forward(to_dev(x), {}, False, 0, stream))
    for part in (slice(0, 3), slice(3, 6)):
        close(y[:, part], host(half.forward(to_dev(x[:, part]), {}, False, 0, stream)))


# ---- rnorm --------------------------------------------------------------------------------
@pytest.mark.parametrize("size,beta", [(3, 0.75), (2, 0.5), (4, 1.0), (3, 0.6)])
def test_rnorm_matches_cpu(size, beta, stream):
    shape = (3, 5, 7)
    layer = cpu_layer("rnorm", {"size": size, "alpha": 2.0, "beta": beta, "k": 1.0}, shape)
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    g = rng.standard_normal((2,) + shape).astype(np.float32)
    both(layer, x, g, stream, rtol=2e-5, atol=2e-6)


# ---- neuron -------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", NEURONS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (13,)])
def test_neuron_matches_cpu(fn, shape, stream):
    layer = cpu_layer("neuron", {"fn": fn}, shape)
    x = distinct((2,) + shape, seed=8, gap=0.05)
    if fn == "sqrt":
        x = np.abs(x)
    g = np.random.default_rng(9).standard_normal((2,) + shape).astype(np.float32)
    both(layer, x, g, stream)


# ---- softmax ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d,scale", [(3, 7, 3.0), (2, 150, 1.0), (2, 5, 100.0)])
def test_softmax_forward_cost_backward_match_cpu(n, d, scale, stream):
    # d = 150 > ROW_THREADS: threads loop over the row; scale 100: large logits stay finite
    layer = cpu_layer("softmax", {}, (d,))
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    labels = rng.integers(0, d, n)
    impl = cuda_impl(layer)
    p_dev = impl.forward(to_dev(x), {}, False, 0, stream)
    loss_dev, dxc_dev = impl.cost(to_dev(labels, np.int32), stream)
    dy = rng.standard_normal((n, d)).astype(np.float32)
    stream.synchronize()
    p = layer.forward(x, {}).copy()
    close(host(p_dev), p, rtol=1e-5, atol=1e-7)
    loss, dxc = layer.cost(labels)
    assert loss_dev.shape == (1,) and loss_dev.dtype == np.float32
    assert abs(float(host(loss_dev)[0]) - loss) < 1e-5 * max(1.0, loss)
    close(host(dxc_dev), dxc, rtol=1e-5, atol=1e-7)
    dxb_dev, grads = impl.backward(to_dev(dy), {}, True, stream)
    dxb, _ = layer.backward(dy, {})
    assert grads == {}
    close(host(dxb_dev), dxb, rtol=1e-5, atol=1e-6)


def test_softmax_flattens_a_spatial_input(stream):
    layer = cpu_layer("softmax", {}, (2, 2, 3))
    x = np.random.default_rng(10).standard_normal((3, 12)).astype(np.float32)
    impl = cuda_impl(layer)
    p = host(impl.forward(to_dev(x.reshape(3, 2, 2, 3)), {}, False, 0, stream))
    close(p, layer.forward(x, {}), rtol=1e-5, atol=1e-7)


# ---- dropout ------------------------------------------------------------------------------
def host_mask(size, seed, rate):
    """The keep mask the kernels draw for an int seed (DrawKey(seed)) on the layer named
    "dropout", from the NumPy definition of the generator (layers/dropout/reference.py)."""
    return dropout_ref.kept("dropout", (1, size), rate, seed).reshape(-1)


def dropout(shape, rate):
    return cuda_impl(cpu_layer("dropout", {"rate": rate}, shape))


def run_dropout(impl, x, seed, stream):
    return host(impl.forward(to_dev(x), {}, True, seed, stream))


def test_dropout_same_seed_same_mask_other_seed_other_mask(stream):
    shape = (3, 5, 7)
    x = distinct((2,) + shape)
    impl = dropout(shape, 0.5)
    y1, y2, y3 = (run_dropout(impl, x, s, stream) for s in (11, 11, 12))
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1 != 0, y3 != 0)
    # a fresh layer with the same seed draws the same mask too: no hidden state
    np.testing.assert_array_equal(run_dropout(dropout(shape, 0.5), x, 11, stream), y1)


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_dropout_kept_fraction_and_independent_seeds(rate, stream):
    # 4096 units: the kept fraction has std sqrt(rate (1 - rate) / n) <= 0.0079; allow 5 std
    # (a false failure ~ 6e-7). Two seeds agree on a unit with probability
    # (1-rate)^2 + rate^2, with the same binomial spread, if their masks are independent.
    n = 4096
    x = np.ones((4, n // 4), np.float32)
    impl = dropout((n // 4,), rate)
    kept = run_dropout(impl, x, 1, stream) != 0
    std = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * std
    other = run_dropout(impl, x, 2, stream) != 0
    agree = (1 - rate) ** 2 + rate ** 2
    assert abs((kept == other).mean() - agree) < 5 * np.sqrt(agree * (1 - agree) / n)
    np.testing.assert_array_equal(kept.reshape(-1), host_mask(n, 1, rate))


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.0])
def test_dropout_scales_kept_units_and_backward_uses_the_same_mask(rate, stream):
    shape = (3, 5, 7)
    x = distinct((2,) + shape)          # no zeros: y == 0 exactly where a unit is dropped
    impl = dropout(shape, rate)
    y = run_dropout(impl, x, 5, stream)
    mask = (y != 0).astype(np.float32)
    scale = np.float32(1.0 / (1.0 - rate))
    np.testing.assert_array_equal(y, x * mask * scale)
    np.testing.assert_array_equal(mask.reshape(-1) != 0, host_mask(x.size, 5, rate))
    if rate == 0.0:
        assert mask.all()
    g = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    dx, grads = impl.backward(to_dev(g), {}, True, stream)
    assert grads == {}
    np.testing.assert_array_equal(host(dx), g * mask * scale)


def test_dropout_is_the_identity_at_test_time(stream):
    shape = (3, 5, 7)
    x = distinct((2,) + shape)
    impl = dropout(shape, 0.5)
    xd = to_dev(x)
    y = impl.forward(xd, {}, False, 5, stream)
    np.testing.assert_array_equal(host(y), x)
    g = to_dev(np.ones_like(x))
    dx, _ = impl.backward(g, {}, True, stream)
    np.testing.assert_array_equal(host(dx), np.ones_like(x))
    assert impl.backward(g, {}, False, stream) == (None, {})
