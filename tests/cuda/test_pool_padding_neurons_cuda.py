"""pool's padding / ceil / global / adaptive keys and the leaky, elu and selu neurons on CUDA
(the simulator in CI): the same numbers as the CPU layers, and finite differences through
the device kernels.

Tiny shapes, because the simulator runs every CUDA thread as a Python thread.
"""
import numpy as np
import pytest
from helpers import OnDevice, close_abs as close, cuda_impl, distinct, host, to_dev

import layers
from engine import gradcheck

NEW_FNS = ["leaky", "leaky[0.3]", "elu", "elu[0.5]", "selu"]


def both(layer, x, g, stream, params=None, rtol=1e-5, atol=1e-6):
    """Forward and backward on the CPU layer and its CUDA twin; compare."""
    params = params or {}
    y_cpu = layer.forward(x, params).copy()
    dx_cpu, _ = layer.backward(g, params)
    dx_cpu = dx_cpu.copy()
    impl = cuda_impl(layer)
    dp = {k: to_dev(v) for k, v in params.items()}
    y_dev = impl.forward(to_dev(x), dp, False, 0, stream)
    dx_dev, _ = impl.backward(to_dev(g), dp, True, stream)
    stream.synchronize()
    close(host(y_dev), y_cpu, rtol, atol)
    close(host(dx_dev), dx_cpu, rtol, atol)


def pool(cfg, shape):
    return layers.get("pool")("pool", cfg, [shape])


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("size,stride,pad,ceil,shape", [
    (3, 2, 1, True, (2, 5, 6)), (2, 2, 1, True, (2, 5, 4)), (2, 2, 1, False, (1, 5, 5)),
    (3, 1, 1, True, (1, 4, 5)), (3, 3, 0, False, (1, 7, 5))])
def test_padded_pool_matches_cpu(mode, size, stride, pad, ceil, shape, stream):
    layer = pool({"mode": mode, "size": size, "stride": stride, "padding": pad, "ceil": ceil}, shape)
    x = np.random.default_rng(size + pad).integers(-2, 3, (2,) + shape).astype(np.float32)  # ties
    g = np.random.default_rng(1).standard_normal((2,) + layer.output_shape).astype(np.float32)
    both(layer, x, g, stream)


@pytest.mark.parametrize("cfg,shape", [({"adaptive": [2, 3]}, (2, 5, 7)), ({"adaptive": [4, 3]}, (1, 3, 5)),
                                       ({"global": True, "neuron": "selu"}, (2, 4, 5))])
def test_global_and_adaptive_match_cpu(cfg, shape, stream):
    layer = pool(dict(cfg, mode="avg"), shape)
    x = distinct((2,) + shape, seed=2)
    g = np.random.default_rng(2).standard_normal((2,) + layer.output_shape).astype(np.float32)
    both(layer, x, g, stream)


@pytest.mark.parametrize("cfg", [{"mode": "max", "size": 3, "stride": 2, "padding": 1, "neuron": "leaky"},
                                 {"mode": "avg", "size": 3, "stride": 2, "padding": 1, "ceil": False},
                                 {"mode": "avg", "adaptive": [2, 3], "neuron": "elu"}])
def test_pool_finite_differences_on_the_device(cfg, stream):
    shape = (2, 5, 5)
    gradcheck.check(OnDevice(pool(cfg, shape), stream), [distinct((1,) + shape, seed=6, gap=0.2)], samples=8)


EDGES = np.array([-100, -20, -1.5, -0.5, 0, 0.5, 1.5, 20, 100], np.float32)


@pytest.mark.parametrize("fn", NEW_FNS)
def test_new_neurons_match_cpu_at_edge_values(fn, stream):
    layer = layers.get("neuron")("n", {"fn": fn}, [(EDGES.size,)])
    g = np.linspace(-0.9, 1.1, EDGES.size, dtype=np.float32).reshape(1, -1)
    both(layer, EDGES.reshape(1, -1), g, stream, atol=1e-7)


@pytest.mark.parametrize("fn", NEW_FNS)
def test_new_neurons_finite_differences_on_the_device(fn, stream):
    layer = layers.get("neuron")("n", {"fn": fn}, [(3, 5)])
    gradcheck.check(OnDevice(layer, stream), [distinct((2, 3, 5), seed=4)], samples=8)


@pytest.mark.parametrize("fn", ["leaky[0.2]", "elu", "selu"])
def test_new_neurons_fused_on_conv_match_cpu(fn, stream):
    layer = layers.get("conv")("c", {"filters": 2, "size": 3, "padding": 1, "neuron": fn}, [(2, 4, 4)])
    rng = np.random.default_rng(3)
    p = {"weight": (rng.standard_normal((2, 2, 3, 3)) * 0.3).astype(np.float32),
         "bias": rng.standard_normal(2).astype(np.float32)}
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    g = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    both(layer, x, g, stream, p, rtol=1e-4, atol=1e-5)
