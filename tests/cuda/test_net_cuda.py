"""Whole nets on CUDA (the simulator in CI): the same numbers as on the CPU.

Tiny two-column nets, because the simulator runs each CUDA thread as a Python thread.
"""
import numpy as np
import pytest

import engine
from engine import memory
from engine.finite import NonFiniteError
from engine.solver import SGD
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
    close(one.forward(x), two.forward(x))
    close(g1["c1.weight"], np.concatenate([g2["c1a.weight"], g2["c1b.weight"]]), tol=5e-4)
    close(g1["f3.weight"], np.concatenate([g2["f3a.weight"], g2["f3b.weight"]]), tol=5e-4)


def test_sgd_steps_match_cpu():
    """A few SGD steps (momentum, weight decay, per-layer multipliers) on both backends."""
    cpu = engine.load(TWO_COLUMNS, seed=4)
    gpu = engine.load(TWO_COLUMNS, seed=4, device="cuda")
    solver = SGD.for_net(cpu, momentum=0.9, weight_decay=0.01)
    solver_g = SGD.for_net(gpu, momentum=0.9, weight_decay=0.01)
    assert solver_g.backend is gpu.backend and solver_g.multipliers == solver.multipliers
    for step in range(2):
        x, labels = batch(seed=10 + step)
        loss_c, grads = cpu.loss_and_grads(x, labels, train=False)
        solver.step(grads, lr=0.1)
        loss_g, grads_g = gpu.loss_and_grads(x, labels, train=False)
        solver_g.step(grads_g, lr=0.1)
        assert abs(loss_c - loss_g) < 1e-3 * max(1.0, abs(loss_c))
    a, b = cpu.state_dict(), gpu.state_dict()
    for k in a:
        close(b[k], a[k], tol=1e-3)
    va, vb = solver.state_arrays(), solver_g.state_arrays()     # the momentum, read back
    assert va.keys() == vb.keys()
    for k in va:
        close(vb[k], va[k], tol=1e-3)


def test_dropout_on_device_is_reproducible(pair):
    _, gpu = pair
    x, _ = batch(seed=6)

    def dropped(seed):
        gpu.rng = np.random.default_rng(seed)      # the generator the trainer seeds per epoch
        return gpu.forward(x, train=True, outputs=["d3a"])["d3a"]
    out1, out2 = dropped(7), dropped(7)
    np.testing.assert_array_equal(out1, out2)
    # a different seed draws a different mask (layer tests check the statistics)
    out3 = dropped(8)
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


def stop_on_planted_nan(tmp_path, device):
    """Train one good epoch, plant a NaN in the last fc's weights, train on: (the error's
    text with the run folder written as RUN, the state loaded with the NaN, the trainer)."""
    tmp_path.mkdir()
    net_file = tmp_path / "tiny.yaml"
    net_file.write_text(TWO_COLUMNS)
    run = tmp_path / "run"
    trainer = Trainer(str(net_file), data="synthetic:4", batch=4, epochs=1, lr=0.01, device=device,
                      out=str(run), log=lambda *a: None)
    trainer.run()                                   # a good epoch: checkpoint 1 is the newest
    assert trainer.net.device == device
    last_fc = [n.name for n in trainer.net.layers if n.has_params][-1]
    assert last_fc == "f4"
    state = trainer.net.state_dict()
    # the layer before the softmax: a NaN there reaches the loss (a relu would swallow it)
    state[f"{last_fc}.weight"][0, 0] = np.nan
    trainer.net.load_state_dict(state)
    trainer.settings["epochs"] = 2
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert checkpoint_names(run) == ["1.json"]
    return str(info.value).replace(str(run), "RUN"), state, trainer


def assert_intact(net, state):
    """The guard stopped before the update: every parameter is the one loaded, bit for bit,
    and the only NaN is the planted one."""
    after = net.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(after[k], state[k])          # NaN where NaN
        planted = np.zeros(state[k].shape, bool)
        if k == "f4.weight":
            planted[0, 0] = True
        np.testing.assert_array_equal(~np.isfinite(after[k]), planted)


def test_trainer_on_cuda_stops_on_nan_before_the_update_naming_the_spoiled_layer(tmp_path):
    text, state, trainer = stop_on_planted_nan(tmp_path / "cuda", "cuda")
    assert_intact(trainer.net, state)
    # engine.finite.locate finds the weights already non-finite before the batch
    assert text == ("training stopped: the loss became nan (first non-finite: the weight of layer 'f4' "
                    "(already non-finite before this batch)) at epoch 2, batch 1; the learning rate "
                    "(0.01) is probably too high for this net (try a tenth of it); the newest "
                    "checkpoint, RUN/1.json, is from before the fault")
    # the same scenario on the CPU stops with the same words and the weights intact
    cpu_text, cpu_state, cpu_trainer = stop_on_planted_nan(tmp_path / "cpu", "cpu")
    assert_intact(cpu_trainer.net, cpu_state)
    assert cpu_text == text


def test_batch_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    """ENGINE_MEMORY_LIMIT caps the device's room (the simulator knows no limit): a batch
    over it is refused with the largest that fits, before any layer buffer is allocated."""
    gpu = engine.load(TWO_COLUMNS, seed=3, device="cuda")
    cpu = engine.load(TWO_COLUMNS, seed=3)               # loaded before the cap
    nodes = gpu.layers
    limit = memory.estimate(nodes, gpu.input_shape, 2, train=False)["total"]
    monkeypatch.setenv(memory.ENV, str(limit))
    held = gpu.backend.held_bytes([nodes])
    assert held == 4 * gpu.num_params                   # a fresh net holds its parameters only
    x, labels = batch(n=64, seed=11)
    for train, call in ((False, lambda: gpu.forward(x)),
                        (True, lambda: gpu.loss_and_grads(x, labels, train=True))):
        largest = memory.largest_batch(nodes, gpu.input_shape, train, limit)
        with pytest.raises(engine.MemoryLimitError) as info:
            call()
        err = info.value
        assert (err.available, err.largest_batch) == (limit, largest)
        assert err.needed == memory.estimate(nodes, gpu.input_shape, 64, train)["total"] > limit
        text = str(err)
        assert text.startswith(f"net 'tiny-two-column': a {'training' if train else 'forward'} batch of 64 needs ")
        assert f"available ({memory.ENV}={limit})" in text
        assert (f"the largest batch that fits is {largest}" in text if largest
                else text.endswith("not even one image fits"))
        assert gpu.backend.held_bytes([nodes]) == held     # refused before allocating
    assert memory.largest_batch(nodes, gpu.input_shape, False, limit) == 2
    # the largest batch that fits runs, and then the net holds its buffers
    x2 = x[:2]
    close(gpu.forward(x2), cpu.forward(x2))
    assert gpu.backend.held_bytes([nodes]) > held


def test_batch_over_the_devices_free_memory_is_refused(monkeypatch):
    """The device's free memory (plus what the net holds) is the room when no cap is set."""
    from numba import cuda
    monkeypatch.delenv(memory.ENV, raising=False)
    gpu = engine.load(TWO_COLUMNS, seed=3, device="cuda")
    nodes = gpu.layers
    held = gpu.backend.held_bytes([nodes])
    free = memory.estimate(nodes, gpu.input_shape, 3, train=True)["total"] - held
    context = type(cuda.current_context())
    monkeypatch.setattr(context, "get_memory_info", lambda self: (free, 10 * free))
    x, labels = batch(n=64, seed=12)
    with pytest.raises(engine.MemoryLimitError) as info:
        gpu.loss_and_grads(x, labels, train=True)
    err = info.value
    assert (err.available, err.largest_batch) == (free + held, 3)
    assert "available (free memory of the CUDA device); the largest batch that fits is 3" in str(err)
    assert gpu.backend.held_bytes([nodes]) == held
    loss, grads = gpu.loss_and_grads(x[:3], labels[:3], train=True)    # fits: runs
    assert np.isfinite(loss) and gpu.backend.first_nonfinite(grads) is None


def checkpoint_names(run):
    from engine import checkpoint
    return [p.rsplit("/", 1)[-1] for p in checkpoint.list_checkpoints(str(run))]
