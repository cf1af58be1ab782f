"""Whole nets on CUDA (the simulator in CI): the same numbers as on the CPU.

Tiny two-column nets, because the simulator runs each CUDA thread as a Python thread.
"""
import numpy as np
import pytest

import engine
from engine.train import Trainer

TWO_COLUMNS = """
name: tiny-two-column
input: {shape: [2, 6, 6]}
defaults: {init_w: 0.3, init_b: 0.05}
layers:
  - {name: c1a, type: conv, inputs: [data], gpu: 0, filters: 2, size: 3, padding: 1, neuron: relu}
  - {name: n1a, type: cmrnorm, gpu: 0, size: 2, alpha: 0.5, k: 2}
  - {name: p1a, type: pool, gpu: 0, mode: max, size: 3, stride: 2}
  - {name: c1b, type: conv, inputs: [data], gpu: 1, filters: 2, size: 3, padding: 1, neuron: relu}
  - {name: n1b, type: cmrnorm, gpu: 1, size: 2, alpha: 0.5, k: 2}
  - {name: p1b, type: pool, gpu: 1, mode: max, size: 3, stride: 2}
  - {name: c2a, type: conv, inputs: [p1a, p1b], gpu: 0, filters: 2, size: 3, padding: 1, neuron: tanh}
  - {name: c2b, type: conv, inputs: [p1a, p1b], gpu: 1, filters: 2, size: 3, padding: 1, neuron: tanh}
  - {name: f3a, type: fc, inputs: [c2a, c2b], gpu: 0, outputs: 5, neuron: relu}
  - {name: d3a, type: dropout, gpu: 0, rate: 0.5}
  - {name: f3b, type: fc, inputs: [c2a, c2b], gpu: 1, outputs: 5, neuron: relu}
  - {name: d3b, type: dropout, gpu: 1, rate: 0.5}
  - {name: f4, type: fc, inputs: [d3a, d3b], gpu: 0, outputs: 4}
  - {name: prob, type: softmax, gpu: 0}
"""

ONE_COLUMN = """
name: tiny-one-column
input: {shape: [2, 6, 6]}
layers:
  - {name: c1, type: conv, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: n1, type: cmrnorm, size: 2, alpha: 0.5, k: 2, groups: 2}
  - {name: p1, type: pool, mode: max, size: 3, stride: 2}
  - {name: c2, type: conv, filters: 4, size: 3, padding: 1, neuron: tanh}
  - {name: f3, type: fc, outputs: 10, neuron: relu}
  - {name: d3, type: dropout, rate: 0.5}
  - {name: f4, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""


def batch(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 6, 6)).astype(np.float32), rng.integers(0, 4, n)


def close(a, b, tol=2e-4):
    scale = max(np.abs(b).max(), 1e-3)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


@pytest.fixture(scope="module")
def pair():
    return engine.load(TWO_COLUMNS, seed=1), engine.load(TWO_COLUMNS, seed=1, device="cuda")


def test_device_and_state_dict_round_trip(pair):
    cpu, gpu = pair
    assert (cpu.device, gpu.device) == ("cpu", "cuda")
    a, b = cpu.state_dict(), gpu.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_forward_and_gradients_match_cpu_on_both_streams(pair):
    cpu, gpu = pair
    x, labels = batch(seed=3)
    names = ["p1a", "p1b", "c2a", "c2b", "f3a", "f3b", "prob"]
    want = cpu.forward(x, outputs=names)
    got = gpu.forward(x, outputs=names)
    for name in names:     # each column's output, joins across the streams, the result
        close(got[name], want[name])
    loss_c, g_c = cpu.gradients(x, labels)
    loss_g, g_g = gpu.gradients(x, labels)
    assert abs(loss_c - loss_g) < 1e-4 * max(1.0, abs(loss_c))
    assert g_c.keys() == g_g.keys()
    for k in g_c:
        close(g_g[k], g_c[k], tol=5e-4)


def test_two_columns_equal_one_column_on_cuda():
    two = engine.load(TWO_COLUMNS, seed=2, device="cuda")
    one = engine.load(ONE_COLUMN, seed=0, device="cuda")
    s = two.state_dict()
    folded = {}
    for a, b, name in (("c1a", "c1b", "c1"), ("c2a", "c2b", "c2"), ("f3a", "f3b", "f3")):
        for p in ("weight", "bias"):
            folded[f"{name}.{p}"] = np.concatenate([s[f"{a}.{p}"], s[f"{b}.{p}"]])
    folded["f4.weight"], folded["f4.bias"] = s["f4.weight"], s["f4.bias"]
    one.load_state_dict(folded)
    x, labels = batch(seed=5)
    _, g1 = one.gradients(x, labels)
    _, g2 = two.gradients(x, labels)
    close(one._backend.output().copy_to_host(), two._backend.output().copy_to_host())
    close(g1["c1.weight"], np.concatenate([g2["c1a.weight"], g2["c1b.weight"]]), tol=5e-4)
    close(g1["f3.weight"], np.concatenate([g2["f3a.weight"], g2["f3b.weight"]]), tol=5e-4)


def test_sgd_steps_match_cpu():
    """A few SGD steps (momentum, weight decay, per-layer multipliers) on both backends."""
    from engine.solver import SGD
    cpu = engine.load(TWO_COLUMNS, seed=4)
    gpu = engine.load(TWO_COLUMNS, seed=4, device="cuda")
    solver = SGD.for_net(cpu, momentum=0.9, weight_decay=0.01)
    for step in range(2):
        x, labels = batch(seed=10 + step)
        loss_c, grads = cpu.loss_and_grads(x, labels, train=False)
        solver.step(grads, lr=0.1)
        loss_g, _ = gpu.cuda_step(x, labels, train=False, lr=0.1, momentum=0.9, weight_decay=0.01,
                                  multipliers=solver.multipliers)
        assert abs(loss_c - loss_g) < 1e-3 * max(1.0, abs(loss_c))
    a, b = cpu.state_dict(), gpu.state_dict()
    for k in a:
        close(b[k], a[k], tol=1e-3)


def test_dropout_on_device_is_reproducible(pair):
    _, gpu = pair
    x, labels = batch(seed=6)
    out1 = gpu._backend.forward(gpu._backend.upload(x)[0], True, step_seed=7)["d3a"].copy_to_host()
    out2 = gpu._backend.forward(gpu._backend.upload(x)[0], True, step_seed=7)["d3a"].copy_to_host()
    np.testing.assert_array_equal(out1, out2)
    # a different step draws a different mask (layer tests check the statistics)
    out3 = gpu._backend.forward(gpu._backend.upload(x)[0], True, step_seed=8)["d3a"].copy_to_host()
    assert not np.array_equal(out1, out3)


def test_to_cpu_and_back_keeps_weights():
    net = engine.load(TWO_COLUMNS, seed=9, device="cuda")
    before = net.state_dict()
    net.to("cpu")
    assert net.device == "cpu"
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    net.to("cuda")
    x, _ = batch()
    close(net.forward(x), engine.load(TWO_COLUMNS, seed=9).forward(x))


def test_trainer_on_cuda_runs_and_resumes(tmp_path):
    net_file = tmp_path / "tiny.yaml"
    net_file.write_text(TWO_COLUMNS)
    # one batch per epoch and one validation image: the simulator costs ~100 us per thread
    kw = dict(data="synthetic:4", batch=4, lr=0.01, device="cuda", log=lambda *a: None)
    Trainer(str(net_file), epochs=2, out=str(tmp_path / "full"), **kw).run()
    Trainer(str(net_file), epochs=1, out=str(tmp_path / "split"), **kw).run()
    Trainer(None, resume=str(tmp_path / "split"), epochs=2, device="cuda", log=lambda *a: None).run()
    a = engine.load(None, checkpoint=str(tmp_path / "full")).state_dict()
    b = engine.load(None, checkpoint=str(tmp_path / "split")).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_trainer_on_cuda_stops_on_nan_naming_the_spoiled_layer(tmp_path):
    from engine.finite import NonFiniteError
    net_file = tmp_path / "tiny.yaml"
    net_file.write_text(TWO_COLUMNS)
    trainer = Trainer(str(net_file), data="synthetic:4", batch=4, epochs=1, lr=0.01, device="cuda",
                      out=str(tmp_path / "run"), log=lambda *a: None)
    trainer.run()                                   # a good epoch: checkpoint 1 is the newest
    last_fc = [n.name for n in trainer.net.layers if n.has_params][-1]
    state = trainer.net.state_dict()
    # the layer before the softmax: a NaN there reaches the loss (a relu would swallow it)
    state[f"{last_fc}.weight"][0, 0] = np.nan
    trainer.net.load_state_dict(state)
    trainer.settings["epochs"] = 2
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    text = str(info.value)
    assert "the loss became nan" in text and "epoch 2, batch" in text
    assert "first layer with non-finite weights: '" in text       # the update spread it
    assert text.endswith(f"{tmp_path / 'run' / '1.json'}, is from before the fault")
    assert checkpoint_names(tmp_path / "run") == ["1.json"]


def checkpoint_names(run):
    from engine import checkpoint
    return [p.rsplit("/", 1)[-1] for p in checkpoint.list_checkpoints(str(run))]
