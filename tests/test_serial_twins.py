"""Every CPU kernel's serial twin (layers.threads, what a column thread runs) computes what
the parallel kernel computes: a net holding every layer type (built from the layer classes'
`examples`), run both ways."""
import numpy as np
import pytest
from helpers import example_net, missing_examples

import engine
from engine import columns
from layers import registry, threads

COSTS = sorted(t for t, cls in registry.REGISTRY.items() if cls.is_cost)


def run(net, x, labels, serial, start):
    net.rng = np.random.default_rng(4)
    net.load_state_dict(start)      # the training step updates layer state (batchnorm's statistics)
    with (columns.single_core() if serial else threads.serial(False)):
        assert threads.is_serial() == serial
        loss, grads = net.loss_and_grads(x, labels, train=True)
        out = net.forward(x, outputs=[n.name for n in net.layers])
    return loss, {k: g.copy() for k, g in grads.items()}, out


@pytest.mark.parametrize("cost", COSTS)
def test_serial_kernels_compute_what_parallel_kernels_compute(cost):
    net = engine.load(example_net(cost), seed=2, threading="layers")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5,) + net.input_shape).astype(np.float32)
    labels = rng.integers(0, 5, 5) if net.classifies else rng.standard_normal((5,) + net.layers[-1].output_shape)
    start = net.state_dict()
    loss_p, grads_p, out_p = run(net, x, labels, serial=False, start=start)
    loss_s, grads_s, out_s = run(net, x, labels, serial=True, start=start)
    assert loss_s == pytest.approx(loss_p, rel=1e-6)
    for name in out_p:
        np.testing.assert_allclose(out_s[name], out_p[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for k in grads_p:
        scale = max(float(np.abs(grads_p[k]).max()), 1e-6)
        np.testing.assert_allclose(grads_s[k], grads_p[k], rtol=0, atol=1e-5 * scale, err_msg=k)
    assert all(np.abs(g).max() > 0 for g in grads_p.values())


def test_the_nets_cover_every_layer_type():
    assert not missing_examples(), f"layer types without their own `examples`: {missing_examples()}"
    used = {n.type for cost in COSTS for n in engine.load(example_net(cost)).layers}
    assert used == set(registry.REGISTRY)
