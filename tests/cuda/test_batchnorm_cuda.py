"""batchnorm and prelu on CUDA (the simulator in CI): the CPU layers' numbers and the NumPy
references, forward and backward, training and evaluation; finite differences through the
device kernels; the running statistics updated on the device; a net with both equal on CPU
and CUDA, its state moved and saved like its parameters.

Tiny shapes: the simulator runs every CUDA thread as a Python thread.
"""
import numpy as np
import pytest
from helpers import OnDevice, close, cuda_impl, distinct, host, to_dev

import engine
import layers
from engine import gradcheck
from engine.solver import SGD
from layers.batchnorm import reference as bn_ref
from layers.prelu import reference as prelu_ref

SHAPES = [(3, 2, 3), (5,)]


def make(type_name, shape, **cfg):
    return layers.get(type_name)(type_name, cfg, [shape])


def bn_params(layer, seed=0):
    rng = np.random.default_rng(seed)
    c = layer.channels
    return {"weight": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": rng.standard_normal(c).astype(np.float32),
            "running_mean": rng.standard_normal(c).astype(np.float32),
            "running_var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def both(layer, x, params, dy, stream, train):
    """(CPU y, dx, grads), (CUDA y, dx, grads)."""
    y = layer.forward(x, params, train=train).copy()
    dx, grads = layer.backward(dy, params)
    cpu = (y, dx.copy(), {k: g.copy() for k, g in grads.items()})
    impl = cuda_impl(layer)
    dparams = {k: to_dev(v) for k, v in params.items()}
    y_dev = impl.forward(to_dev(x), dparams, train, 0, stream)
    dx_dev, dgrads = impl.backward(to_dev(dy), dparams, True, stream)
    dev = (host(y_dev), host(dx_dev), {k: host(g) for k, g in dgrads.items()})
    stream.synchronize()
    return cpu, dev, impl, dparams


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("neuron", [None, "square"])
def test_batchnorm_cuda_matches_cpu_and_reference(stream, shape, train, neuron):
    layer = make("batchnorm", shape, neuron=neuron, momentum=0.3)
    p = bn_params(layer)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3,) + shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    cpu, dev, impl, dparams = both(layer, x, p, dy, stream, train)
    x3 = x.reshape(3, layer.channels, -1).astype(np.float64)
    mean, var = bn_ref.statistics(x3) if train else (p["running_mean"], p["running_var"])
    want_y, _ = bn_ref.forward(x3, p["weight"], p["bias"], mean, var, 1e-5, neuron)
    want_dx, want_dw, want_db = bn_ref.backward(dy.reshape(want_y.shape).astype(np.float64), x3, p["weight"],
                                                p["bias"], mean, var, 1e-5, train, neuron)
    for got in (cpu, dev):
        close(got[0].reshape(want_y.shape), want_y, rtol=1e-4, atol=1e-5)
        close(got[1].reshape(want_dx.shape), want_dx, rtol=1e-4, atol=1e-4)
        close(got[2]["weight"], want_dw, rtol=1e-4, atol=1e-4)
        close(got[2]["bias"], want_db, rtol=1e-4, atol=1e-4)
    if train:
        state = {k: dparams[k] for k in ("running_mean", "running_var")}
        impl.update_state(state, stream)
        stream.synchronize()
        want_m, want_v = bn_ref.update_running(p["running_mean"], p["running_var"], mean, var, 0.3, x3.shape[0] * x3.shape[2])
        close(host(state["running_mean"]), want_m, rtol=1e-5, atol=1e-6)
        close(host(state["running_var"]), want_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_device_backward_matches_finite_differences(stream, train):
    layer = make("batchnorm", (2, 2, 3), neuron="tanh")
    gradcheck.check(OnDevice(layer, stream), [distinct((3, 2, 2, 3))], bn_params(layer, 2), train=train)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_cuda_matches_cpu_and_reference(stream, shape, shared):
    layer = make("prelu", shape, shared=shared)
    rng = np.random.default_rng(3)
    p = {"weight": rng.uniform(-0.5, 1.5, layer.param_shapes()["weight"]).astype(np.float32)}
    x = distinct((3,) + shape, seed=4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    cpu, dev, _, _ = both(layer, x, p, dy, stream, True)
    x3 = x.reshape(3, layer.channels, -1)
    want_dx, want_dw = prelu_ref.backward(dy.reshape(x3.shape), x3, p["weight"])
    for got in (cpu, dev):
        close(got[0].reshape(x3.shape), prelu_ref.forward(x3, p["weight"]))
        close(got[1].reshape(x3.shape), want_dx)
        close(got[2]["weight"], want_dw)


def test_prelu_device_backward_matches_finite_differences(stream):
    layer = make("prelu", (2, 2, 3), shared=True)
    gradcheck.check(OnDevice(layer, stream), [distinct((2, 2, 2, 3))], {"weight": np.array([0.3], np.float32)})


NET = """
name: bn-prelu
input: {shape: [2, 4, 4]}
defaults: {init_w: 0.3}
layers:
  - {name: c1, type: conv, filters: 3, size: 3, padding: 1}
  - {name: bn1, type: batchnorm, momentum: 0.2}
  - {name: a1, type: prelu}
  - {name: f2, type: fc, outputs: 4}
  - {name: bn2, type: batchnorm, neuron: tanh}
  - {name: f3, type: fc, outputs: 3}
  - {name: prob, type: softmax}
"""


def test_a_net_with_state_matches_the_cpu_over_training_steps():
    cpu, gpu = engine.load(NET, seed=1), engine.load(NET, seed=1, device="cuda")
    rng = np.random.default_rng(0)
    opts = [SGD.for_net(net, momentum=0.9, weight_decay=0.01) for net in (cpu, gpu)]
    for step in range(2):
        x = rng.standard_normal((4, 2, 4, 4)).astype(np.float32)
        y = rng.integers(0, 3, 4)
        for net, opt in zip((cpu, gpu), opts):
            _, grads = net.loss_and_grads(x, y, train=True)
            opt.step(grads, lr=0.1)
    a, b = cpu.state_dict(), gpu.state_dict()
    assert list(a) == list(b) and "bn1.running_var" in a
    for k in a:
        close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert not np.all(a["bn2.running_var"] == 1)
    close(gpu.forward(x), cpu.forward(x), rtol=1e-4, atol=1e-5)
    state = dict(a, **{"bn1.running_mean": np.full(3, 0.5, np.float32)})
    gpu.load_state_dict(state)
    assert np.all(gpu.state_dict()["bn1.running_mean"] == 0.5)
    gpu.to("cpu")
    assert np.all(gpu.state_dict()["bn1.running_mean"] == 0.5)
