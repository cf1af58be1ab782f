"""Neuron functions (edge values, fused on conv and fc) and the sum2 cost on CUDA (the
simulator in CI): the same numbers as the CPU layers, and finite differences through the
device kernels.

Tiny shapes, because the simulator runs every CUDA thread as a Python thread.
"""
import numpy as np
import pytest
from helpers import NEURON_FNS as FNS, OnDevice, close_abs as close, cuda_impl, fused_params, host, to_dev
from helpers import neuron_inputs as inputs

import engine
import layers
from engine import gradcheck


# ---- edge values: the device functions agree with the CPU ones everywhere ---------------------
EDGES = np.array([-100, -20, -1.5, -0.5, 0, 0.5, 1.5, 20, 100], np.float32)


@pytest.mark.parametrize("fn", FNS)
def test_neuron_edge_values_match_cpu(fn, stream):
    # sqrt: NaN below 0 and an infinite slope at 0 on both; softrelu/logistic finite at +-100
    layer = layers.get("neuron")("n", {"fn": fn}, [(EDGES.size,)])
    x = EDGES.reshape(1, -1)
    g = np.linspace(-0.9, 1.1, EDGES.size, dtype=np.float32).reshape(1, -1)   # g > 0 at x = 0
    with np.errstate(all="ignore"):
        y = layer.forward(x, {}).copy()
        dx = layer.backward(g, {})[0].copy()
        impl = cuda_impl(layer)
        y_dev = impl.forward(to_dev(x), {}, False, 0, stream)
        dx_dev, _ = impl.backward(to_dev(g), {}, True, stream)
        stream.synchronize()
    close(host(y_dev), y)
    close(host(dx_dev), dx, atol=1e-8)
    if fn == "sqrt":
        assert np.isnan(host(y_dev)[0, 0]) and host(dx_dev)[0, 4] == np.inf


@pytest.mark.parametrize("fn", FNS)
def test_neuron_finite_differences_on_the_device(fn, stream):
    layer = layers.get("neuron")("n", {"fn": fn}, [(3, 5)])
    gradcheck.check(OnDevice(layer, stream), [inputs(fn, (2, 3, 5), seed=4)], samples=8)


# ---- fused on conv and fc -----------------------------------------------------------------------
def run_both(layer, p, x, stream):
    dy = np.random.default_rng(1).standard_normal((x.shape[0],) + layer.output_shape).astype(np.float32)
    y = layer.forward(x, p).copy()
    dx, grads = layer.backward(dy, p)
    want = [y, dx.copy()] + [grads[k].copy() for k in ("weight", "bias")]
    impl = cuda_impl(layer)
    dp = {k: to_dev(v) for k, v in p.items()}
    y_dev = impl.forward(to_dev(x), dp, False, 0, stream)
    dx_dev, dgrads = impl.backward(to_dev(dy), dp, True, stream)
    stream.synchronize()
    got = [host(y_dev), host(dx_dev)] + [host(dgrads[k]) for k in ("weight", "bias")]
    for a, b in zip(got, want):
        close(a.reshape(b.shape), b, rtol=1e-4, atol=1e-5)


# conv's kernels call the same device functions as fc's: one function of each kind here (kept
# pre-activation, parameters, sqrt's domain) keeps the simulator time down
@pytest.mark.parametrize("fn", ["square", "tanh[1.7159,0.6667]", "sqrt"])
def test_conv_fused_matches_cpu(fn, stream):
    layer = layers.get("conv")("c", dict(filters=2, size=3, padding=1, neuron=fn), [(2, 3, 4)])
    x = np.random.default_rng(2).standard_normal((2, 2, 3, 4)).astype(np.float32)
    run_both(layer, fused_params(layer, fn, 3), x, stream)


@pytest.mark.parametrize("fn", FNS)
def test_fc_fused_matches_cpu(fn, stream):
    layer = layers.get("fc")("f", dict(outputs=5, neuron=fn), [(6,)])
    x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    run_both(layer, fused_params(layer, fn, 5), x, stream)


# ---- sum2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, coeff", [((3, 7), 1.0), ((2, 3, 2, 5), 0.25), ((2, 200), 2.0)])
def test_sum2_cost_matches_cpu(shape, coeff, stream):
    # (2, 200): 4 blocks of partial sums
    layer = layers.get("sum2")("cost", {"coeff": coeff}, [shape[1:]])
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    layer.forward(x, {})
    loss, dx = layer.cost(None)
    impl = cuda_impl(layer)
    xd = to_dev(x)
    assert impl.forward(xd, {}, False, 0, stream) is xd           # the identity
    loss_dev, dx_dev = impl.cost(None, stream)
    stream.synchronize()
    assert host(loss_dev).shape == (1,)
    assert host(loss_dev)[0] == pytest.approx(loss, rel=1e-5)
    close(host(dx_dev), dx)


class CostOnDevice(OnDevice):
    def cost(self, labels):
        loss, dx = self.impl.cost(labels, self.stream)
        self.stream.synchronize()
        return float(host(loss)[0]), host(dx)


def test_sum2_finite_differences_on_the_device(stream):
    layer = layers.get("sum2")("cost", {"coeff": 0.5}, [(2, 3)])
    x = np.random.default_rng(8).standard_normal((3, 2, 3)).astype(np.float32)
    gradcheck.check(CostOnDevice(layer, stream), [x], samples=4)   # 128-thread reductions: slow here


NET = """\
input: {shape: [1, 4, 4]}
layers:
  - {name: c1, type: conv, filters: 2, size: 3, neuron: "tanh[1.7159,0.6667]", init_w: 0.3}
  - {name: f1, type: fc, outputs: 3, neuron: "brelu[0.5]", init_w: 0.3, init_b: 0.2}
  - {name: cost, type: sum2, coeff: 0.5}
"""


def test_net_ending_in_sum2_matches_cpu_without_labels():
    x = np.random.default_rng(7).standard_normal((2, 1, 4, 4)).astype(np.float32)
    cpu, dev = engine.load(NET, seed=2), engine.load(NET, seed=2, device="cuda")
    close(dev.forward(x), cpu.forward(x))
    loss, grads = cpu.gradients(x, labels=None)
    dloss, dgrads = dev.gradients(x, labels=None)
    assert dloss == pytest.approx(loss, rel=1e-5)
    for k in grads:
        close(dgrads[k], grads[k], rtol=1e-4, atol=1e-6)
