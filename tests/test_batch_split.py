"""Threading "batch": each half of a batch on its own thread through its own copy of the
layers; the same function as one pass, reproducible, errors surface."""
import threading

import numpy as np
import pytest

import engine
from engine import columns

ONE_COLUMN = """
name: one-column
input: {shape: [3, 10, 10]}
defaults: {init_w: 0.2, init_b: 0.05}
layers:
  - {name: c1, type: conv, filters: 6, size: 3, padding: 1, neuron: relu}
  - {name: n1, type: cmrnorm, size: 3, alpha: 0.5, k: 2}
  - {name: p1, type: pool, mode: max, size: 3, stride: 2}
  - {name: c2, type: conv, filters: 6, size: 3, padding: 1, neuron: tanh}
  - {name: s2, type: eltsum, inputs: [c2, p1], coeffs: [1, 0.5]}
  - {name: f3, type: fc, inputs: [s2, p1], outputs: 10, neuron: relu}
  - {name: DROP, type: dropout, rate: 0.5}
  - {name: f4, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""
NO_DROPOUT = ONE_COLUMN.replace("type: dropout, rate: 0.5", "type: neuron, fn: linear")


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 10, 10)).astype(np.float32), rng.integers(0, 4, n)


def step(net, x, y, mode, train=True):
    net.threading = mode
    net.rng = np.random.default_rng(3)
    loss, grads = net.loss_and_grads(x, y, train=train)
    return loss, {k: g.copy() for k, g in grads.items()}


@pytest.mark.parametrize("n", [columns.MIN_SPLIT, 9, 32])
def test_halves_compute_what_one_pass_computes(n):
    net = engine.load(NO_DROPOUT, seed=1)
    x, y = batch(n)
    loss_l, grads_l = step(net, x, y, "layers")
    assert len(net._executor.copies) == 1
    loss_b, grads_b = step(net, x, y, "batch")
    assert len(net._executor.copies) == 2
    assert loss_b == pytest.approx(loss_l, rel=1e-5)
    for k in grads_l:
        scale = max(float(np.abs(grads_l[k]).max()), 1e-6)
        np.testing.assert_allclose(grads_b[k], grads_l[k], rtol=0, atol=2e-5 * scale, err_msg=k)
    names = [node.name for node in net.layers]
    net.threading = "layers"
    want, want_loss = net.forward(x, outputs=names), net.loss(x, y)
    net.threading = "batch"
    got, got_loss = net.forward(x, outputs=names), net.loss(x, y)
    for name in names:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(net.forward(x), want["prob"], rtol=1e-5, atol=1e-7)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)


def test_halves_are_reproducible_with_dropout():
    net = engine.load(ONE_COLUMN, seed=1)
    x, y = batch(20)
    loss0, grads0 = step(net, x, y, "batch")
    for _ in range(10):
        loss, grads = step(net, x, y, "batch")
        assert loss == loss0
        for k in grads0:
            np.testing.assert_array_equal(grads[k], grads0[k], err_msg=k)
    net.threading = "batch"
    net.rng = np.random.default_rng(3)
    acts = net.forward(x, train=True, outputs=["f3", "DROP"])
    live, kept = acts["f3"] != 0, acts["DROP"] != 0
    assert live.sum() > 40 and 0.3 < kept[live].mean() < 0.7      # both halves drew masks
    assert kept[:10][live[:10]].any() and kept[10:][live[10:]].any()


def test_small_batches_are_not_split():
    net = engine.load(NO_DROPOUT, threading="batch")
    x, y = batch(columns.MIN_SPLIT - 1)
    assert len(net._executor.halves(x.shape[0])) == 1
    net.loss_and_grads(x, y)
    assert len(net._executor.copies) == 1


@pytest.mark.parametrize("half", [0, 1])
def test_an_error_in_either_half_surfaces(half):
    net = engine.load(NO_DROPOUT, threading="batch")
    x, y = batch(10)
    net.loss_and_grads(x, y)
    layer = (net.layers if half == 0 else net._executor.copies[1])[3].layer

    def broken(*a, **k):
        raise RuntimeError(f"boom in half {half}")
    layer.forward = broken
    with pytest.raises(RuntimeError, match=f"boom in half {half}"):
        net.loss_and_grads(x, y)
    with pytest.raises(RuntimeError, match=f"boom in half {half}"):
        net.forward(x)
    del layer.forward
    assert np.isfinite(net.loss_and_grads(x, y)[0])


def test_labels_are_checked_for_the_whole_batch():
    net = engine.load(NO_DROPOUT, threading="batch")
    x, y = batch(10)
    with pytest.raises(ValueError, match="10"):
        net.loss_and_grads(x, y[:7])


def test_a_sum2_cost_in_halves():
    text = ("name: s2\ninput: {shape: [2, 5, 5]}\nlayers:\n"
            "  - {name: c, type: conv, filters: 3, size: 3, neuron: tanh, init_w: 0.3}\n"
            "  - {name: cost, type: sum2, coeff: 0.5}\n")
    net = engine.load(text, seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 2, 5, 5)).astype(np.float32)
    t = rng.standard_normal((11, 3, 3, 3)).astype(np.float32)
    loss_l, grads_l = step(net, x, t, "layers")
    loss_b, grads_b = step(net, x, t, "batch")
    assert loss_b == pytest.approx(loss_l, rel=1e-5)
    for k in grads_l:
        np.testing.assert_allclose(grads_b[k], grads_l[k], rtol=1e-4, atol=1e-6)


def test_memory_estimate_counts_both_halves():
    from engine import memory
    net = engine.load(NO_DROPOUT)
    one = memory.estimate(net.layers, net.input_shape, 64, True)
    two = memory.estimate(net.layers, net.input_shape, 64, True, split_from=columns.MIN_SPLIT)
    assert two["parameter_gradients"] == 2 * one["parameter_gradients"]
    assert two["activations"] == one["activations"]
    small = memory.estimate(net.layers, net.input_shape, 4, True, split_from=columns.MIN_SPLIT)
    assert small == memory.estimate(net.layers, net.input_shape, 4, True)


TWO_COLUMNS = """
name: two
input: {shape: [3, 10, 10]}
layers:
  - {name: a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, neuron: relu}
  - {name: b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, neuron: relu}
  - {name: f, type: fc, inputs: [a, b], gpu: 0, outputs: 3}
  - {name: prob, type: softmax}
"""


@pytest.mark.parametrize("text,mode", [(NO_DROPOUT, "batch"), (TWO_COLUMNS, "columns")])
def test_worker_threads_keep_the_callers_numpy_error_state(text, mode):
    net = engine.load(text, threading=mode)
    x = batch(10)[0]
    net.forward(x)
    nodes = net._executor.copies[1] if mode == "batch" else [n for n in net.layers if n.gpu == 1]
    layer = nodes[0].layer
    seen = []

    def spy(*a, _f=layer.forward, **k):
        seen.append((threading.current_thread().name, np.geterr()))
        return _f(*a, **k)
    layer.forward = spy
    for state in ("raise", "ignore", "warn"):
        with np.errstate(all=state):
            net.forward(x)
        name, err = seen[-1]
        assert name != threading.main_thread().name
        assert set(err.values()) == {state}


@pytest.mark.parametrize("text,mode", [(NO_DROPOUT, "batch"), (TWO_COLUMNS, "columns"), (NO_DROPOUT, "layers")])
def test_time_verb_says_how_its_layer_rows_were_timed(text, mode):
    from engine.tools.timing import measure
    net = engine.load(text, threading=mode)
    r = measure(net, batch=columns.MIN_SPLIT, iterations=1, warmup=1)
    said = [note for note in r.notes if note.startswith("CPU threading")]
    assert said == ([] if mode == "layers" else [said[0]]) and (mode == "layers" or mode in said[0])
    assert [row.name for row in r.layers] == [n.name for n in net.layers]
    assert all(row.forward_ms >= 0 and row.backward_ms >= 0 for row in r.layers) and r.step_ms > 0
