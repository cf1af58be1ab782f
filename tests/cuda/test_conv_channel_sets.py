"""conv with `channel_sets` on CUDA (the simulator in CI): the gather and scatter-add kernels
around the grouped convolution give the CPU layer's numbers and the NumPy reference, forward
and backward; finite differences through the device kernels; a net equal on CPU and CUDA.

Tiny shapes: the simulator runs every CUDA thread as a Python thread.
"""
import numpy as np
import pytest
from helpers import OnDevice, close, cuda_impl, host, to_dev

import engine
import layers
from engine import gradcheck
from layers.conv import reference

# (N, C, H, W, filters, size, stride, padding, channel_sets, neuron, shared biases)
CASES = [
    (2, 5, 6, 5, 4, 3, 2, 1, [[4, 1, 3], [0, 4, 4]], "relu", True),      # overlap, a repeat, 2 unread
    (1, 4, 5, 6, 3, 2, 1, 0, [[2, 0], [3, 1], [1, 2]], "abs", False),     # unshared biases
]


def setup(case, seed=0):
    n, c, h, w, f, k, s, p, sets, fn, shared = case
    rng = np.random.default_rng(seed)
    layer = layers.get("conv")("conv", dict(filters=f, size=k, stride=s, padding=p, groups=len(sets),
                                            channel_sets=sets, neuron=fn, init_w=0.3, shared_biases=shared),
                               [(c, h, w)])
    params = layer.init_params(rng)
    params["bias"][:] = rng.standard_normal(params["bias"].shape)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n,) + layer.output_shape).astype(np.float32)
    return layer, params, x, dy


@pytest.mark.parametrize("case", CASES, ids=["overlap", "unshared"])
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
    assert dx.shape == x.shape
    c = layer.cfg
    args = (params["weight"].astype(np.float64), params["bias"].astype(np.float64), c["stride"],
            c["padding"], c["groups"], c["neuron"], c["channel_sets"])
    rdx, rdw, rdb = reference.backward(dy.astype(np.float64), x.astype(np.float64), *args)
    for got, cpu, want in ((host(y), y_cpu, reference.forward(x.astype(np.float64), *args)),
                           (host(dx), dx_cpu, rdx), (host(grads["weight"]), g_cpu["weight"], rdw),
                           (host(grads["bias"]), g_cpu["bias"], rdb)):
        close(got, cpu)
        close(got, want)


def test_finite_differences_on_the_device(stream):
    layer, params, x, _ = setup(CASES[1], seed=3)
    params["bias"] += np.sign(params["bias"]) * 3.0          # inputs far from abs's kink
    gradcheck.check(OnDevice(layer, stream), [x], params, samples=8)


NET = ("name: t\ninput: {shape: [4, 5, 5]}\nlayers:\n"
       "  - {name: c1, type: conv, filters: 4, size: 3, padding: 1, groups: 2, "
       "channel_sets: [[3, 0, 1], [2, 3, 1]], neuron: tanh}\n"
       "  - {name: f, type: fc, outputs: 3}\n  - {name: prob, type: softmax}\n")


def test_net_matches_cpu():
    cpu = engine.load(NET, seed=1)
    gpu = engine.load(NET, seed=1, device="cuda")
    x = np.random.default_rng(8).standard_normal((2, 4, 5, 5)).astype(np.float32)
    labels = np.array([2, 0])
    loss_c, g_c = cpu.gradients(x, labels)
    loss_g, g_g = gpu.gradients(x, labels)
    assert loss_g == pytest.approx(loss_c, rel=1e-4)
    for k in g_c:
        close(g_g[k], g_c[k], rtol=1e-3, atol=1e-4)
