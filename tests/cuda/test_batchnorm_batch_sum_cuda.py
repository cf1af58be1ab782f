"""batchnorm on CUDA over the parts of a global batch (Layer.batch_sum, as data-parallel ranks
hold it): two parts on two threads taking turns (tests/batch_parts.py), each with its own
device layer, against the NumPy reference of the whole batch: outputs, input gradients,
the parameter gradients the exchange sums, the running statistics; one part may be empty.
Tiny shapes: the simulator runs every CUDA thread as a Python thread."""
import numpy as np
import pytest
from batch_parts import TakingTurns, bounds, part_dy
from helpers import close, cuda_impl, host, to_dev
from numba import cuda

import engine
import layers
from layers.batchnorm import reference


def make(shape):
    return layers.get("batchnorm")("bn", {"neuron": "relu", "momentum": 0.3}, [shape])


def start_params(c, seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": rng.standard_normal(c).astype(np.float32),
            "running_mean": rng.standard_normal(c).astype(np.float32),
            "running_var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


@pytest.mark.parametrize(("shape", "sizes"), [((3, 2, 3), (2, 2)), ((5,), (4, 0))], ids=["conv-2+2", "fc-4+0"])
def test_device_parts_of_a_batch_train_as_the_whole_batch(shape, sizes):
    n = sum(sizes)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n,) + shape) * 2 + 1.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    turns = TakingTurns(len(sizes))
    out = [None] * len(sizes)

    def part(r, a, b):
        layer = make(shape)
        layer.batch_sum = turns.batch_sum(r)
        impl, stream = cuda_impl(layer), cuda.stream()
        p = {k: to_dev(v) for k, v in start_params(layer.channels).items()}
        y = host(impl.forward(to_dev(x[a:b]), p, True, 0, stream))
        impl.update_state({k: p[k] for k in ("running_mean", "running_var")}, stream)
        dx, grads = impl.backward(to_dev(part_dy(dy, a, b)), p, True, stream)
        stream.synchronize()
        share = np.float32((b - a) / n)
        out[r] = (y, host(dx) * share, {k: host(g) * share for k, g in grads.items()},
                  {k: host(p[k]) for k in ("running_mean", "running_var")})
    turns.run([lambda r=r, a=a, b=b: part(r, a, b) for r, (a, b) in enumerate(bounds(sizes))])
    assert turns.calls == [3] * len(sizes)
    p = start_params(shape[0])
    x3 = x.reshape(n, shape[0], -1).astype(np.float64)
    mean, var = reference.statistics(x3)
    want_y, _ = reference.forward(x3, p["weight"], p["bias"], mean, var, 1e-5, "relu")
    want_dx, want_dw, want_db = reference.backward(dy.reshape(want_y.shape).astype(np.float64), x3, p["weight"],
                                                   p["bias"], mean, var, 1e-5, True, "relu")
    want_m, want_v = reference.update_running(p["running_mean"], p["running_var"], mean, var, 0.3,
                                              x3.shape[0] * x3.shape[2])
    close(np.concatenate([o[0] for o in out]).reshape(want_y.shape), want_y, rtol=1e-4, atol=1e-5)
    close(np.concatenate([o[1] for o in out]).reshape(want_dx.shape), want_dx, rtol=1e-4, atol=1e-4)
    close(sum(o[2]["weight"] for o in out), want_dw, rtol=1e-4, atol=1e-4)
    close(sum(o[2]["bias"] for o in out), want_db, rtol=1e-4, atol=1e-4)
    for *_, state in out:
        close(state["running_mean"], want_m, rtol=1e-5, atol=1e-6)
        close(state["running_var"], want_v, rtol=1e-5, atol=1e-6)


NET = """\
name: bn-tiny
input: {shape: [1, 4, 4]}
layers:
  - {name: c1, type: conv, filters: 2, size: 3, padding: 1, init_w: 0.3, bias: false}
  - {name: bn1, type: batchnorm, neuron: relu}
  - {name: f2, type: fc, outputs: 3, init_w: 0.3}
  - {name: prob, type: softmax}
"""


def test_an_empty_share_on_the_device_makes_the_collectives_of_a_full_one():
    """Executor.empty_step on CUDA (zero-image device arrays): the batch_sum calls of a full
    step, and the running statistics of a global batch of zeros."""
    def calls_of(step):
        net = engine.load(NET, device="cuda")
        seen = []

        def batch_sum(values):
            seen.append(values.size)
            values[:] = 0.0
            if values.size % 2:           # [C sums, count] (C = 2): as if all values were zeros, 60 of them
                values[-1] = 60
        net.layer("bn1").layer.batch_sum = batch_sum
        step(net)
        return seen, net
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    full, _ = calls_of(lambda net: net.loss_and_grads(x, np.array([0, 1, 2])))
    empty, net = calls_of(lambda net: net.executor.empty_step())
    assert empty == full == [3, 2, 4]
    state = net.state_dict()
    np.testing.assert_array_equal(state["bn1.running_mean"], 0)
    np.testing.assert_allclose(state["bn1.running_var"], 0.9, rtol=1e-6)
