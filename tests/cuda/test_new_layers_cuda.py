"""local, cnorm, concat, eltsum, eltmax and dropout2 on CUDA (the simulator in CI): the CPU
layers' numbers and the NumPy references, forward and backward; finite differences through
the device kernels themselves; a two-column net of all of them equal on CPU and CUDA.

Tiny shapes, because the simulator runs every CUDA thread as a Python thread (the GEMM's
256-thread blocks with barriers are the slowest: local keeps its locations few).
"""
import numpy as np
import pytest
from helpers import OnDevice, close, cuda_impl, host, sums_off_kinks, to_dev

import engine
import layers
from engine import gradcheck
from engine.solver import SGD
from layers.base import split_grad
from layers.cnorm import reference as cnorm_ref
from layers.concat import reference as concat_ref
from layers.cudabase import join_inputs as dev_join, split_grad as dev_split
from layers.dropout2 import reference as dropout2_ref
from layers.eltmax import reference as eltmax_ref
from layers.eltsum import reference as eltsum_ref
from layers.local import reference as local_ref


def cpu_layer(type_name, cfg, shapes):
    return layers.get(type_name)(type_name, cfg, [tuple(s) for s in shapes])


def as_list(dx):
    return dx if isinstance(dx, list) else [dx]


def run_both(layer, xs, params, dy, stream, train=False):
    """(CPU y, dxs, grads), (CUDA y, dxs, grads) for inputs xs (a list, joined as the engine does)."""
    from layers.base import join_inputs
    y = layer.forward(join_inputs(layer, xs), params, train=train).copy()
    dx, grads = layer.backward(dy, params)
    cpu = (y, [d.copy() for d in split_grad(layer, dx, layer.input_shapes)],
           {k: g.copy() for k, g in grads.items()})
    impl = cuda_impl(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    y_dev = impl.forward(dev_join(impl, [to_dev(x) for x in xs], stream), dparams, train, 0, stream)
    dx_dev, dgrads = impl.backward(to_dev(dy), dparams, True, stream)
    dev = (host(y_dev), [host(d) for d in dev_split(impl, dx_dev, stream)],
           {k: host(g) for k, g in dgrads.items()})
    stream.synchronize()
    return cpu, dev


def assert_same(cpu, dev, want=None, rtol=1e-5, atol=1e-6):
    """CUDA = CPU (and = the reference's (y, dxs, grads) when given)."""
    for other in (cpu,) + ((want,) if want is not None else ()):
        close(dev[0], other[0], rtol, atol)
        assert len(dev[1]) == len(other[1])
        for a, b in zip(dev[1], other[1]):
            close(a, b, rtol, atol)
        assert dev[2].keys() == other[2].keys()
        for k in dev[2]:
            close(dev[2][k], other[2][k], rtol, atol)


# ---- local ---------------------------------------------------------------------------------
# (N, C, H, W, filters, size, stride, padding, padding_end, groups, neuron): few locations
LOCAL_CASES = [
    (2, 2, 2, 4, 2, 2, 1, 0, 0, 1, "tanh[1.7159,0.6667]"),   # 1x3 locations
    (1, 4, 2, 3, 4, 2, 2, 0, 1, 2, "abs"),                   # 1x2, groups, padding_end
    (2, 2, 2, 3, 4, 3, 2, 1, 0, 2, "relu"),                  # 1x2, groups, padding
]


def local_case(case, seed=0):
    n, c, h, w, f, k, s, p, e, g, fn = case
    rng = np.random.default_rng(seed)
    layer = cpu_layer("local", dict(filters=f, size=k, stride=s, padding=p, padding_end=e, groups=g,
                                    neuron=fn, init_w=0.3), [(c, h, w)])
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(params["bias"].shape)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n,) + layer.output_shape).astype(np.float32)
    return layer, params, x, dy


def local_reference(layer, params, x, dy):
    c = layer.cfg
    args = (params["weight"].astype(np.float64), params["bias"].astype(np.float64), c["stride"],
            c["padding"], c["groups"], c["neuron"], c["padding_end"])
    x64 = x.astype(np.float64)
    dx, dw, db = local_ref.backward(dy.astype(np.float64), x64, *args)
    return local_ref.forward(x64, *args), [dx], {"weight": dw, "bias": db}


@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: "-".join(map(str, c)))
def test_local_matches_cpu_and_reference(case, stream):
    layer, params, x, dy = local_case(case)
    cpu, dev = run_both(layer, [x], params, dy, stream)
    assert_same(cpu, dev, local_reference(layer, params, x, dy), rtol=1e-4, atol=1e-5)


def test_local_gemm_batches_beyond_the_grid_limit(stream, monkeypatch):
    """More location x group products than one launch's grid z holds: several launches."""
    import layers.local.cuda as local_cuda
    monkeypatch.setattr(local_cuda, "MAX_GRID_Z", 3)           # 2 locations x 2 groups: 3 + 1
    layer, params, x, dy = local_case(LOCAL_CASES[1], seed=1)
    cpu, dev = run_both(layer, [x], params, dy, stream)
    assert_same(cpu, dev, rtol=1e-4, atol=1e-5)


def test_local_without_dx_then_repeated_backward(stream):
    layer, params, x, dy = local_case((1, 1, 2, 3, 2, 2, 1, 0, 0, 1, "linear[2,0.5]"), seed=2)
    impl = cuda_impl(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    impl.forward(to_dev(x), dparams, False, 0, stream)
    none, grads = impl.backward(to_dev(dy), dparams, False, stream)
    first = {k: host(v) for k, v in grads.items()}
    dx1 = host(impl.backward(to_dev(dy), dparams, True, stream)[0])    # cols still valid
    dx2, grads2 = impl.backward(to_dev(dy), dparams, True, stream)      # cols was overwritten: redone
    assert none is None
    np.testing.assert_array_equal(dx1, host(dx2))
    for k in first:
        np.testing.assert_array_equal(first[k], host(grads2[k]))


def test_local_finite_differences_on_the_device(stream):
    # one location, one GEMM block: the simulator's slowest kernel, run ~20 times here
    layer, params, x, _ = local_case((1, 2, 2, 2, 2, 2, 1, 0, 0, 1, "tanh[1.7159,0.6667]"), seed=3)
    gradcheck.check(OnDevice(layer, stream), [x], params, samples=4)


# ---- cnorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size,beta", [(3, 0.75), (2, 0.6), (1, 1.0), (4, 0.5)])
def test_cnorm_matches_cpu_and_reference(size, beta, stream):
    shape = (2, 4, 5)
    cfg = {"size": size, "alpha": 4.0, "beta": beta, "k": 1.0}
    layer = cpu_layer("cnorm", cfg, [shape])
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    cpu, dev = run_both(layer, [x], {}, dy, stream)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    want = (cnorm_ref.forward(x64, size, 4.0, beta, 1.0), [cnorm_ref.backward(x64, dy64, size, 4.0, beta, 1.0)], {})
    assert_same(cpu, dev, want, rtol=2e-5, atol=2e-5)


def test_cnorm_finite_differences_on_the_device(stream):
    layer = cpu_layer("cnorm", {"size": 3, "alpha": 4.0}, [(2, 3, 4)])
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 4)).astype(np.float32)
    gradcheck.check(OnDevice(layer, stream), [x], samples=12)


# ---- concat --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,shapes", [("channels", [(2, 2, 3), (1, 2, 3), (3, 2, 3)]),
                                         ("flat", [(2, 2, 3), (5,)]),
                                         ("channels", [(2, 2, 3)])])
def test_concat_matches_cpu_and_reference(mode, shapes, stream):
    layer = cpu_layer("concat", {"mode": mode}, shapes)
    rng = np.random.default_rng(len(shapes))
    xs = [rng.standard_normal((2,) + s).astype(np.float32) for s in shapes]
    dy = rng.standard_normal((2,) + layer.output_shape).astype(np.float32)
    cpu, dev = run_both(layer, xs, {}, dy, stream)
    assert_same(cpu, dev, (concat_ref.forward(xs, mode), concat_ref.backward(dy, shapes, mode), {}))
    gradcheck.check(OnDevice(layer, stream), xs, samples=6)


# ---- eltsum / eltmax -----------------------------------------------------------------------
@pytest.mark.parametrize("neuron", [None, "relu", "abs", "tanh[1.5,0.5]"])
def test_eltsum_matches_cpu_and_reference_and_finite_differences(neuron, stream):
    coeffs = [0.5, 1.0, -2.0]
    layer = cpu_layer("eltsum", {"coeffs": coeffs, "neuron": neuron}, [(2, 3, 3)] * 3)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 2, 3, 3)).astype(np.float32) for _ in coeffs]
    sums_off_kinks(xs, coeffs)
    dy = rng.standard_normal(xs[0].shape).astype(np.float32)
    cpu, dev = run_both(layer, xs, {}, dy, stream)
    assert_same(cpu, dev, (eltsum_ref.forward(xs, coeffs, neuron), eltsum_ref.backward(dy, coeffs, xs, neuron), {}))
    gradcheck.check(OnDevice(layer, stream), xs, samples=6)


def test_eltmax_matches_cpu_and_reference_with_ties_and_finite_differences(stream):
    layer = cpu_layer("eltmax", {}, [(2, 3, 3)] * 3)
    rng = np.random.default_rng(6)
    ties = [rng.integers(0, 3, (2, 2, 3, 3)).astype(np.float32) for _ in range(3)]   # many ties
    dy = rng.standard_normal(ties[0].shape).astype(np.float32)
    cpu, dev = run_both(layer, ties, {}, dy, stream)
    assert_same(cpu, dev, (eltmax_ref.forward(ties), eltmax_ref.backward(ties, dy), {}))
    values = (rng.permutation(3 * 36) - 54) * 0.1          # distinct: no tie within h
    xs = [a.astype(np.float32) for a in values.reshape(3, 2, 2, 3, 3)]
    gradcheck.check(OnDevice(layer, stream), xs, samples=6, h=1e-3)


# ---- dropout2 ------------------------------------------------------------------------------
def test_dropout2_mask_is_zero_one_kept_with_probability_keep(stream):
    layer = cpu_layer("dropout2", {"keep": 0.3}, [(500,)])
    impl = cuda_impl(layer)
    x = np.ones((2, 500), np.float32)
    a = host(impl.forward(to_dev(x), {}, True, 11, stream))
    b = host(impl.forward(to_dev(x), {}, True, 11, stream))
    c = host(impl.forward(to_dev(x), {}, True, 12, stream))
    assert set(np.unique(a)) == {0.0, 1.0}                  # classic dropout: no scaling
    assert abs(a.mean() - 0.3) < 0.06                       # 1000 Bernoulli(0.3): std 0.0145
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    dx = host(impl.backward(to_dev(g), {}, True, stream)[0])
    np.testing.assert_array_equal(dx, g * c)                # the latest forward's mask


def test_dropout2_test_time_scales_by_keep_and_finite_differences(stream):
    layer = cpu_layer("dropout2", {"keep": 0.7}, [(2, 3, 3)])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    cpu, dev = run_both(layer, [x], {}, dy, stream)
    keep = np.float32(0.7)
    want = (dropout2_ref.forward_test(x, 0.7), [dropout2_ref.backward(dy, keep)], {})
    assert_same(cpu, dev, want)
    for train in (False, True):        # training: the mask is fixed by the device seed
        gradcheck.check(OnDevice(layer, stream, seed=3), [x], train=train, samples=8)


# ---- a net of them all, two columns ----------------------------------------------------------
NET = """
name: new-layers
input: {shape: [2, 4, 4]}
defaults: {init_w: 0.3, init_b: 0.05}
layers:
  - {name: la, type: local, inputs: [data], filters: 2, size: 3, neuron: tanh, gpu: 0}
  - {name: ca, type: conv, inputs: [data], filters: 2, size: 3, neuron: relu, gpu: 1}
  - {name: na, type: cnorm, inputs: [la], size: 2, alpha: 0.5, gpu: 0}
  - {name: s, type: eltsum, inputs: [na, ca], coeffs: [1.0, -0.5], gpu: 0}
  - {name: m, type: eltmax, inputs: [ca, na], gpu: 1}
  - {name: j, type: concat, inputs: [s, m], gpu: 1}
  - {name: f, type: fc, outputs: 6, neuron: relu, gpu: 1}
  - {name: d, type: dropout2, keep: 0.5, gpu: 1}
  - {name: o, type: fc, inputs: [d, s], outputs: 3, gpu: 0}
  - {name: prob, type: softmax, gpu: 0}
"""


def test_net_of_new_layers_matches_cpu_on_two_streams():
    cpu = engine.load(NET, seed=1)
    gpu = engine.load(NET, seed=1, device="cuda")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    labels = np.array([2, 0])
    loss_c, g_c = cpu.gradients(x, labels)
    loss_g, g_g = gpu.gradients(x, labels)
    names = ["s", "m", "j", "d", "prob"]
    want = cpu.forward(x, outputs=names)
    got = gpu.forward(x, outputs=names)
    for name, act in want.items():       # each column's layers, the joins across the streams
        close(got[name], act, rtol=1e-4, atol=1e-5)
    assert loss_g == pytest.approx(loss_c, rel=1e-4)
    for k in g_c:
        close(g_g[k], g_c[k], rtol=1e-3, atol=1e-4)
    # a training step: dropout2's mask drawn on the device, then the SGD update there
    gpu.rng = np.random.default_rng(5)
    loss, grads = gpu.loss_and_grads(x, labels, train=True)
    assert np.isfinite(loss) and gpu.backend.first_nonfinite(grads) is None
    before = gpu.state_dict()
    SGD.for_net(gpu).step(grads, 0.01)
    after = gpu.state_dict()
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(after[k], before[k]) for k in before)
