"""The optimizers, gradient-norm clipping and label smoothing on CUDA (the simulator in CI):
the same numbers as on the CPU, and a CUDA run that resumes from saved state bit for bit."""
import numpy as np
import pytest
from numba import cuda

import engine
from engine import settings, solver_cuda
from engine.solver import CHUNK, Adam, AdamW, Nesterov, SGD
from helpers import cuda_impl, host, to_dev

NET = """
name: tiny-optimizers
input: {shape: [2, 5, 5]}
defaults: {init_w: 0.3, init_b: 0.05}
layers:
  - {name: c1, type: conv, filters: 3, size: 3, padding: 1, neuron: relu, lr_w: 2, wd: 0.5}
  - {name: f2, type: fc, outputs: 6, neuron: tanh, lr_b: 3}
  - {name: f3, type: fc, outputs: 4}
  - {name: prob, type: softmax, label_smoothing: 0.1}
"""
KINDS = {"sgd": (SGD, {}), "nesterov": (Nesterov, {}), "adam": (Adam, {}), "adamw": (AdamW, {"betas": (0.8, 0.99)})}


def batch(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 2, 5, 5)).astype(np.float32), rng.integers(0, 4, 3)


def close(a, b, tol=2e-4):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(np.abs(b).max(), 1e-3))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_steps_with_clipping_and_smoothing_match_cpu(name):
    cls, kw = KINDS[name]
    cpu = engine.load(NET, seed=4)
    gpu = engine.load(NET, seed=4, device="cuda")
    # a clip below the gradients' norm: every step is clipped
    opt_c = cls.for_net(cpu, weight_decay=0.01, clip_norm=0.05, **kw)
    opt_g = cls.for_net(gpu, weight_decay=0.01, clip_norm=0.05, **kw)
    for step in range(2):
        x, labels = batch(10 + step)
        loss_c, g_c = cpu.loss_and_grads(x, labels, train=False)
        loss_g, g_g = gpu.loss_and_grads(x, labels, train=False)
        assert abs(loss_c - loss_g) < 1e-4 * max(1.0, abs(loss_c))
        opt_c.step(g_c, lr=0.1)
        opt_g.step(g_g, lr=0.1)
    assert opt_g.take_grad_norm() == pytest.approx(opt_c.take_grad_norm(), rel=1e-4)
    a, b = cpu.state_dict(), gpu.state_dict()
    for k in a:
        close(b[k], a[k], tol=1e-3)
    sa, sb = opt_c.state_arrays(), opt_g.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        close(sb[k], sa[k], tol=1e-3)


def test_adam_resumes_on_the_device_bit_for_bit():
    def run(steps, state=None, start=0):
        net = engine.load(NET, seed=6, device="cuda")
        if state is not None:
            net.load_state_dict(state[0])
        opt = AdamW.for_net(net, weight_decay=0.01, clip_norm=0.05)
        if state is not None:
            opt.load_state_arrays(state[1])
        for step in range(start, steps):
            x, labels = batch(20 + step)
            opt.step(net.loss_and_grads(x, labels, train=False)[1], lr=0.05)
        return net.state_dict(), opt.state_arrays()
    whole = run(3)
    half = run(1)
    resumed = run(3, half, start=1)
    assert all(np.array_equal(whole[0][k], resumed[0][k]) for k in whole[0])
    assert all(np.array_equal(whole[1][k], resumed[1][k]) for k in whole[1])


def test_sum_squares_kernel_covers_every_chunk_from_any_grid():
    """Fewer blocks than chunks: each block walks several chunks (as with a large parameter)."""
    g = np.random.default_rng(7).standard_normal(1000).astype(np.float32)
    partials = cuda.device_array(7, np.float32)
    solver_cuda.sum_squares[2, 128](to_dev(g), partials)
    want = [np.sum(g[j * 143:(j + 1) * 143].astype(np.float64) ** 2) for j in range(7)]
    np.testing.assert_allclose(host(partials), want, rtol=1e-5)


def test_clip_norm_over_several_chunks_matches_cpu():
    big = """
input: {shape: [1, 1, 1]}
layers:
  - {name: f1, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""
    net = engine.load(big, device="cuda")
    opt = SGD.for_net(net, clip_norm=1.0)
    n = 2 * CHUNK + 3
    g = np.random.default_rng(8).standard_normal(n).astype(np.float32)
    dev = {"f1.weight": to_dev(g)}
    opt.multipliers, opt.params = {"f1.weight": (1.0, 1.0)}, {"f1.weight": to_dev(np.zeros(n, np.float32))}
    norm = opt.clip(dev, ["f1.weight"])
    assert norm == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-5)
    close(host(dev["f1.weight"]), g * (1.0 / (norm + 1e-6)), tol=1e-6)


@pytest.mark.parametrize("e", [0.0, 0.2])
def test_smoothed_cost_matches_cpu(stream, e):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((5, 13)) * 3).astype(np.float32)
    labels = rng.integers(0, 13, 5)
    layer = engine.load(f"input: {{shape: [13, 1, 1]}}\nlayers:\n  - {{name: p, type: softmax, "
                        f"label_smoothing: {e}}}\n").layers[-1].layer
    layer.forward(x, {})
    loss_c, dx_c = layer.cost(labels)
    impl = cuda_impl(layer)
    impl.forward(to_dev(x), {}, False, 0, stream)
    loss_g, dx_g = impl.cost(to_dev(labels, np.int32), stream)
    assert host(loss_g)[0] == pytest.approx(loss_c, rel=1e-5)
    close(host(dx_g), dx_c, tol=1e-5)


def test_trainer_settings_build_the_device_optimizer():
    net = engine.load(NET, device="cuda")
    opt = settings.make_optimizer(settings.resolve({"optimizer": "nesterov", "clip_norm": 2}), net)
    assert type(opt) is Nesterov and opt.backend is net.backend and opt.clip_norm == 2.0
