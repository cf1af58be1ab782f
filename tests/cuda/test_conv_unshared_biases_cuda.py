"""conv with `shared_biases: false` on CUDA (the simulator in CI): the CPU layer's numbers and
the NumPy reference, forward and backward (the per-position bias gradient kernel); finite
differences through the device kernels; a net equal on CPU and CUDA that takes an SGD step.

Tiny shapes: the simulator runs every CUDA thread as a Python thread.
"""
import numpy as np
import pytest
from helpers import OnDevice, close, cuda_impl, host, to_dev

import engine
import layers
from engine import gradcheck
from engine.solver import SGD
from layers.conv import reference

# (N, C, H, W, filters, size, stride, padding, groups, neuron)
CASES = [
    (2, 4, 7, 6, 4, 3, 2, 1, 2, "relu"),     # stride 2, groups 2, non-square
    (1, 3, 5, 8, 2, 3, 1, 1, 1, "abs"),      # batch 1, abs keeps the pre-activation
    (2, 2, 4, 5, 3, 2, 1, 0, 1, "tanh"),
]


def setup(case, seed=0):
    n, c, h, w, f, k, s, p, g, fn = case
    rng = np.random.default_rng(seed)
    layer = layers.get("conv")("conv", dict(filters=f, size=k, stride=s, padding=p, groups=g, neuron=fn,
                                            init_w=0.3, shared_biases=False), [(c, h, w)])
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(params["bias"].shape)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n,) + layer.output_shape).astype(np.float32)
    return layer, params, x, dy


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_cpu_and_reference(case, stream):
    layer, params, x, dy = setup(case)
    y_cpu = layer.forward(x, params).copy()
    dx_cpu, g_cpu = layer.backward(dy, params)
    dx_cpu, g_cpu = dx_cpu.copy(), {k: v.copy() for k, v in g_cpu.items()}
    impl = cuda_impl(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    y = impl.forward(to_dev(x), dparams, True, 0, stream)
    dx, grads = impl.backward(to_dev(dy), dparams, True, stream)
    stream.synchronize()
    assert grads["bias"].shape == params["bias"].shape == (layer.filters,) + layer.out_hw
    c = layer.cfg
    args = (params["weight"].astype(np.float64), params["bias"].astype(np.float64), c["stride"],
            c["padding"], c["groups"], c["neuron"])
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x.astype(np.float64), *args)
    for got, cpu, want in ((host(y), y_cpu, reference.forward(x.astype(np.float64), *args)),
                           (host(dx), dx_cpu, rdx), (host(grads["weight"]), g_cpu["weight"], rdw),
                           (host(grads["bias"]), g_cpu["bias"], rdb)):
        close(got, cpu)
        close(got, want)


def test_finite_differences_on_the_device(stream):
    layer, params, x, _ = setup(CASES[2], seed=3)
    gradcheck.check(OnDevice(layer, stream), [x], params, samples=8)


NET = ("name: t\ninput: {shape: [2, 5, 5]}\nlayers:\n"
       "  - {name: c1, type: conv, filters: 3, size: 3, padding: 1, shared_biases: false, neuron: tanh}\n"
       "  - {name: c2, type: conv, filters: 4, size: 2, stride: 2, neuron: relu}\n"
       "  - {name: f, type: fc, outputs: 3}\n  - {name: prob, type: softmax}\n")


def test_net_matches_cpu_and_takes_a_step():
    cpu = engine.load(NET, seed=1)
    gpu = engine.load(NET, seed=1, device="cuda")
    x = np.random.default_rng(8).standard_normal((2, 2, 5, 5)).astype(np.float32)
    labels = np.array([2, 0])
    loss_c, g_c = cpu.gradients(x, labels)
    loss_g, g_g = gpu.gradients(x, labels)
    assert loss_g == pytest.approx(loss_c, rel=1e-4)
    assert g_g["c1.bias"].shape == (3, 5, 5)
    for k in g_c:
        close(g_g[k], g_c[k], rtol=1e-3, atol=1e-4)
    loss, grads = gpu.loss_and_grads(x, labels, train=True)
    before = gpu.state_dict()
    SGD.for_net(gpu).step(grads, 0.01)
    after = gpu.state_dict()
    assert not np.array_equal(after["c1.bias"], before["c1.bias"])
    assert all(np.isfinite(v).all() for v in after.values())
