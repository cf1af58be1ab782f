"""Every CPU kernel's serial twin (layers.threads, what a column thread runs) computes what
the parallel kernel computes: a net holding every layer type, run both ways."""
import numpy as np
import pytest

import engine
from engine import columns
from layers import registry, threads

EVERY_TYPE = """
name: every-type
input: {shape: [4, 9, 9]}
defaults: {init_w: 0.3, init_b: 0.1}
layers:
  - {name: c, type: conv, inputs: [data], filters: 6, size: 3, padding: 1, stride: 1, groups: 2, neuron: relu}
  - {name: c4, type: conv, inputs: [data], filters: 6, size: 4, padding: 2, stride: 3, padding_end: 1, neuron: "tanh[1.7,0.6]"}
  - {name: lo, type: local, inputs: [data], filters: 6, size: 3, padding: 1, neuron: softrelu}
  - {name: es, type: eltsum, inputs: [c, lo], coeffs: [1, -0.5]}
  - {name: em, type: eltmax, inputs: [es, lo]}
  - {name: j, type: concat, inputs: [em, c]}
  - {name: n1, type: cmrnorm, size: 5, alpha: 0.1, beta: 0.75, k: 2}
  - {name: r, type: rnorm, size: 3, alpha: 0.1}
  - {name: cn, type: cnorm, size: 3, alpha: 0.1}
  - {name: pm, type: pool, mode: max, size: 3, stride: 2, neuron: abs}
  - {name: pa, type: pool, inputs: [cn], mode: avg, size: 3, stride: 2, neuron: "brelu[2]"}
  - {name: a, type: neuron, inputs: [pa], fn: logistic}
  - {name: s, type: neuron, inputs: [pm], fn: sqrt}
  - {name: f, type: fc, inputs: [s, a, c4], outputs: 12, neuron: relu}
  - {name: d, type: dropout, rate: 0.3}
  - {name: d2, type: dropout2, keep: 0.6}
  - {name: f2, type: fc, outputs: 5, neuron: square, init_w: 0.1}
  - {name: prob, type: softmax}
"""

SUM2 = """
name: sum2-net
input: {shape: [2, 5, 5]}
layers:
  - {name: c, type: conv, filters: 3, size: 3, neuron: "linear[2,0.5]", init_w: 0.3}
  - {name: cost, type: sum2, coeff: 0.5}
"""


def run(net, x, labels, serial):
    net.rng = np.random.default_rng(4)
    with (columns.single_core() if serial else threads.serial(False)):
        assert threads.is_serial() == serial
        loss, grads = net.loss_and_grads(x, labels, train=True)
        out = net.forward(x, outputs=[n.name for n in net.layers])
    return loss, {k: g.copy() for k, g in grads.items()}, out


@pytest.mark.parametrize("text", [EVERY_TYPE, SUM2], ids=["every-type", "sum2"])
def test_serial_kernels_compute_what_parallel_kernels_compute(text):
    net = engine.load(text, seed=2, threading="layers")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5,) + net.input_shape).astype(np.float32)
    labels = rng.integers(0, 5, 5) if net.classifies else rng.standard_normal((5,) + net.layers[-1].output_shape)
    loss_p, grads_p, out_p = run(net, x, labels, serial=False)
    loss_s, grads_s, out_s = run(net, x, labels, serial=True)
    assert loss_s == pytest.approx(loss_p, rel=1e-6)
    for name in out_p:
        np.testing.assert_allclose(out_s[name], out_p[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for k in grads_p:
        scale = max(float(np.abs(grads_p[k]).max()), 1e-6)
        np.testing.assert_allclose(grads_s[k], grads_p[k], rtol=0, atol=1e-5 * scale, err_msg=k)
    assert all(np.abs(g).max() > 0 for g in grads_p.values())


def test_the_nets_cover_every_layer_type():
    used = {n.type for text in (EVERY_TYPE, SUM2) for n in engine.load(text).layers}
    assert used == set(registry.REGISTRY)
