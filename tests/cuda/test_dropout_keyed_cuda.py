"""CPU and CUDA dropout draw the same masks (layers.draw_key's one generator): bit-identical
outputs and gradients for dropout and dropout2, whole batches and slices with their global
sample offsets, and the same masks in a net on either device."""
import numpy as np
import pytest
from helpers import close_abs as close, cuda_impl, distinct, host, to_dev

import engine
import layers
from layers.draw_key import DrawKey

CASES = [("dropout", {"rate": 0.4}), ("dropout", {"rate": 0.0}), ("dropout2", {"keep": 0.6})]


@pytest.mark.parametrize("type_name, cfg", CASES)
def test_cpu_and_cuda_draw_bit_identical_masks(type_name, cfg, stream):
    shape = (3, 5, 7)
    layer = layers.get(type_name)("drop", cfg, [shape])
    impl = cuda_impl(layer)
    x = distinct((4,) + shape)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    key = DrawKey(12, epoch=3, step=8, sample_offset=5)
    for rows, k in ((slice(0, 4), key), (slice(1, 4), key.rows_from(1))):   # a batch, a slice
        y_cpu = layer.forward(x[rows], {}, train=True, rng=k).copy()
        dx_cpu = layer.backward(dy[rows], {})[0].copy()
        y_dev = host(impl.forward(to_dev(x[rows]), {}, True, k, stream))
        dx_dev = host(impl.backward(to_dev(dy[rows]), {}, True, stream)[0])
        np.testing.assert_array_equal(y_dev, y_cpu)
        np.testing.assert_array_equal(dx_dev, dx_cpu)
    if cfg.get("rate", 1.0) != 0.0:
        assert 0 < (y_cpu == 0).mean() < 1


NET = """
name: keyed
input: {shape: [2, 3, 3]}
defaults: {init_w: 0.3, init_b: 0.1}
layers:
  - {name: f1, type: fc, outputs: 12, neuron: tanh}
  - {name: d1, type: dropout, rate: 0.5}
  - {name: f2, type: fc, outputs: 10, neuron: tanh}
  - {name: d2, type: dropout2, keep: 0.7}
  - {name: f3, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""


def test_a_net_draws_the_same_masks_on_either_device():
    cpu = engine.load(NET, seed=1, threading="layers")
    gpu = engine.load(NET, seed=1, device="cuda")
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((4, 2, 3, 3)).astype(np.float32), np.array([0, 3, 1, 2])
    for net in (cpu, gpu):
        net.draw_key = DrawKey(4, epoch=1, step=6)
    want = cpu.forward(x, train=True, outputs=["d1", "d2"])
    got = gpu.forward(x, train=True, outputs=["d1", "d2"])
    for name in want:
        np.testing.assert_array_equal(got[name] != 0, want[name] != 0, err_msg=name)
        close(got[name], want[name], rtol=1e-5, atol=1e-6)
    loss_c, g_c = cpu.gradients(x, labels, train=True)
    loss_g, g_g = gpu.gradients(x, labels, train=True)
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    for k in g_c:
        close(g_g[k], g_c[k], rtol=1e-4, atol=1e-6)
