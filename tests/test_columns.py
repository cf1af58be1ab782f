"""The two columns of a net on two CPU threads (engine.columns): the same function as
one layer after another, reproducible whichever thread finishes first, errors surface."""
import threading

import numpy as np
import pytest

import engine
from engine import columns
from layers import threads
from layers.conv import cpu as conv_cpu

# cross-column reads in both directions, layers read by readers in both columns,
# dropout in both columns
TWO_COLUMNS = """
name: two-columns
input: {shape: [3, 12, 12]}
defaults: {init_w: 0.2, init_b: 0.05}
layers:
  - {name: c1a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: n1a, type: cmrnorm, gpu: 0, size: 3, alpha: 0.5, k: 2}
  - {name: p1a, type: pool, gpu: 0, mode: max, size: 3, stride: 2}
  - {name: c1b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: n1b, type: cmrnorm, gpu: 1, size: 3, alpha: 0.5, k: 2}
  - {name: p1b, type: pool, gpu: 1, mode: max, size: 3, stride: 2}
  - {name: c2a, type: conv, inputs: [p1a, p1b], gpu: 0, filters: 4, size: 3, padding: 1, neuron: tanh}
  - {name: c2b, type: conv, inputs: [p1b], gpu: 1, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: s2b, type: eltsum, inputs: [c2b, c2a], gpu: 1, coeffs: [0.5, 2]}
  - {name: f3a, type: fc, inputs: [c2a, s2b], gpu: 0, outputs: 10, neuron: relu}
  - {name: d3a, type: dropout, gpu: 0, rate: 0.5}
  - {name: f3b, type: fc, inputs: [c2b, s2b], gpu: 1, outputs: 10, neuron: relu}
  - {name: d3b, type: dropout, gpu: 1, rate: 0.5}
  - {name: f4, type: fc, inputs: [d3a, d3b], gpu: 0, outputs: 5}
  - {name: prob, type: softmax, gpu: 0}
"""


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 12, 12)).astype(np.float32), rng.integers(0, 5, n)


def step(net, mode, rng_seed=7):
    net.threading = mode
    net.rng = np.random.default_rng(rng_seed)
    x, y = batch()
    loss, grads = net.loss_and_grads(x, y, train=True)
    return loss, {k: g.copy() for k, g in grads.items()}, net.forward(x)


def test_columns_compute_what_layers_compute():
    net = engine.load(TWO_COLUMNS, seed=3)
    loss_l, grads_l, out_l = step(net, "layers")
    loss_c, grads_c, out_c = step(net, "columns")
    assert loss_c == pytest.approx(loss_l, rel=1e-5)
    np.testing.assert_allclose(out_c, out_l, rtol=1e-5, atol=1e-7)
    assert grads_c.keys() == grads_l.keys()
    for k in grads_l:
        scale = max(float(np.abs(grads_l[k]).max()), 1e-6)
        np.testing.assert_allclose(grads_c[k], grads_l[k], rtol=0, atol=1e-5 * scale, err_msg=k)
    assert any(np.abs(g).max() > 0 for g in grads_l.values())


def test_columns_are_reproducible_whichever_thread_wins():
    net = engine.load(TWO_COLUMNS, seed=3)
    loss0, grads0, out0 = step(net, "columns")
    for _ in range(15):
        loss, grads, out = step(net, "columns")
        assert loss == loss0
        np.testing.assert_array_equal(out, out0)
        for k in grads0:
            np.testing.assert_array_equal(grads[k], grads0[k], err_msg=k)


def test_dropout_draws_do_not_depend_on_the_mode():
    net = engine.load(TWO_COLUMNS, seed=3)
    masks = {}
    for mode in ("layers", "columns"):
        net.threading = mode
        net.rng = np.random.default_rng(11)
        acts = net.forward(batch()[0], train=True, outputs=["d3a", "d3b"])
        masks[mode] = [acts[d] != 0 for d in ("d3a", "d3b")]
    for a, b in zip(*masks.values()):
        np.testing.assert_array_equal(a, b)


def test_column_threads_run_the_serial_kernels():
    net = engine.load(TWO_COLUMNS, seed=3)
    seen = {}
    for node in net.layers:
        original = node.layer.forward

        def spy(*a, _name=node.name, _f=original, **k):
            seen[_name] = (threads.is_serial(), threading.current_thread().name)
            return _f(*a, **k)
        node.layer.forward = spy
    net.threading = "columns"
    net.forward(batch()[0])
    assert all(serial for serial, _ in seen.values())
    assert seen["c1a"][1] != seen["c1b"][1]          # two threads
    assert seen["c1a"][1] == seen["f4"][1]           # a column stays on its thread
    net.threading = "layers"
    net.forward(batch()[0])
    assert not any(serial for serial, _ in seen.values())


@pytest.mark.parametrize("failing", ["c1b", "c2a", "f3b"])
def test_an_error_in_either_column_surfaces_and_nothing_hangs(failing):
    net = engine.load(TWO_COLUMNS, seed=3)
    net.threading = "columns"
    layer = net.layer(failing).layer

    def broken(*a, **k):
        raise RuntimeError(f"boom in {failing}")
    layer.forward = broken
    with pytest.raises(RuntimeError, match=f"boom in {failing}"):
        net.loss_and_grads(*batch(), train=True)
    del layer.forward                                 # healthy again: the net still runs
    loss, _ = net.loss_and_grads(*batch(), train=True)
    assert np.isfinite(loss)


def test_backward_error_surfaces():
    net = engine.load(TWO_COLUMNS, seed=3)
    net.threading = "columns"
    layer = net.layer("c2b").layer

    def broken(*a, **k):
        raise ValueError("bad backward")
    layer.backward = broken
    with pytest.raises(ValueError, match="bad backward"):
        net.loss_and_grads(*batch(), train=True)


def test_the_rule_that_picks_columns(monkeypatch):
    monkeypatch.delenv(columns.ENV, raising=False)
    two = engine.load(TWO_COLUMNS)
    assert columns.choose(two.layers, "auto", cpus=2)[0] == "columns"
    assert columns.choose(two.layers, "auto", cpus=1)[0] == "layers"
    assert columns.choose(two.layers, "layers", cpus=2)[0] == "layers"
    lopsided = TWO_COLUMNS.replace("filters: 4, size: 3, padding: 1, neuron: relu}",
                                   "filters: 40, size: 3, padding: 1, neuron: relu}", 1)
    mode, why = columns.choose(engine.load(lopsided).layers, "auto", cpus=2)
    assert mode == "batch" and "smallest column" in why
    one = engine.load("name: one\ninput: {shape: [1, 4, 4]}\nlayers:\n"
                      "  - {name: f, type: fc, outputs: 2}\n  - {name: p, type: softmax}\n")
    assert columns.choose(one.layers, "columns", cpus=2) == ("layers", "the net has one column")
    assert columns.choose(one.layers, "auto", cpus=2)[0] == "batch"
    assert columns.choose(one.layers, "auto", cpus=1)[0] == "layers"
    assert columns.choose(one.layers, "batch", cpus=2)[0] == "batch"
    monkeypatch.setenv(columns.ENV, "layers")
    assert columns.choose(two.layers, "auto", cpus=2)[0] == "layers"
    with pytest.raises(ValueError, match="threading must be one of"):
        two.threading = "both"
    with pytest.raises(ValueError, match="threading must be one of"):
        engine.load(TWO_COLUMNS, threading="fast")
    assert "CPU threading: layers" in engine.load(TWO_COLUMNS, threading="layers").summary()


def test_a_layer_keeping_state_without_batch_statistics_keeps_its_batch_whole(monkeypatch):
    # batch statistics are summed over the halves (test_batchnorm); other state would be
    # updated once per half, so such a net runs "layers", and says which layer
    monkeypatch.delenv(columns.ENV, raising=False)
    one = engine.load("name: one\ninput: {shape: [1, 4, 4]}\nlayers:\n"
                      "  - {name: f, type: fc, outputs: 2}\n  - {name: p, type: softmax}\n")
    layer = one.layer("f").layer
    monkeypatch.setattr(layer, "state_shapes", lambda: {"count": (1,)})
    assert not columns.splits(layer)
    for mode in ("auto", "batch"):
        got, why = columns.choose(one.layers, mode, cpus=2)
        assert got == "layers" and "layer 'f' (fc)" in why and "state" in why
    monkeypatch.setattr(layer, "whole_batch", True)
    assert columns.splits(layer)
    assert columns.choose(one.layers, "auto", cpus=2) == (
        "batch", "one column: each half of a batch (of 8 or more) on its own thread, "
                 "batch statistics summed over the halves")


def test_half_sums_give_both_halves_one_sum_and_abort_frees_a_waiting_half():
    import threading
    pair = columns.HalfSums()
    values = [np.array([1.0, 2.0]), np.array([0.5, -4.0])]
    seen = []

    def half(i):
        pair.part(i)(values[i])
        seen.append(i)
    other = threading.Thread(target=half, args=(1,))
    other.start()
    half(0)
    other.join()
    assert sorted(seen) == [0, 1]
    assert values[0].tolist() == values[1].tolist() == [1.5, -2.0]
    lone = columns.HalfSums()
    waiting = threading.Thread(target=lambda: pytest.raises(threading.BrokenBarrierError, lone.part(0),
                                                            np.zeros(2)))
    waiting.start()
    lone.abort()
    waiting.join(timeout=10)
    assert not waiting.is_alive()


def test_half_sums_of_many_calls_of_changing_sizes_with_one_half_running_ahead(monkeypatch):
    """Calls of one size after another and of changing sizes (a batch norm's C + 1 sums, C
    deviations, 2C gradient sums): each call of both halves gets that call's sum (first
    half's values + second's), bit for bit, while the faster half writes its next values
    before the slower has read."""
    import threading
    import time

    class LateFirstHalf:         # numpy, but the first half adds late: the second runs on
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def add(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                time.sleep(0.002)
            return np.add(*args, **kwargs)
    monkeypatch.setattr(columns, "np", LateFirstHalf())
    pair = columns.HalfSums()
    rng = np.random.default_rng(5)
    sizes = [5, 5, 5, 4, 8, 8] * 4
    inputs = [[rng.standard_normal(k) for k in sizes] for _ in range(2)]
    results = [[], []]

    def half(i):
        call = pair.part(i)
        try:
            for x in inputs[i]:
                values = x.copy()
                call(values)
                results[i].append(values)
        except BaseException:
            pair.abort()                   # the other half stops waiting
            raise
    other = threading.Thread(target=half, args=(1,), daemon=True)
    other.start()
    half(0)
    other.join(timeout=30)
    assert not other.is_alive()
    for j in range(len(sizes)):
        want = inputs[0][j] + inputs[1][j]
        np.testing.assert_array_equal(results[0][j], want)
        np.testing.assert_array_equal(results[1][j], want)


def test_serial_twin_is_a_separate_compilation_with_the_same_result():
    kern = conv_cpu.im2col
    assert kern.serial is not kern.parallel
    assert kern.serial.py_func.__qualname__ != kern.parallel.py_func.__qualname__
    xpad = np.random.default_rng(2).standard_normal((2, 3 * 7 * 7)).astype(np.float32)
    out_p = np.empty((27, 2 * 25), np.float32)
    out_s = np.full_like(out_p, np.nan)
    with threads.serial(False):               # the parallel kernel, small as the call is
        kern(xpad, 3, 1, 7, 7, 5, 5, out_p)
    with threads.serial():
        assert threads.is_serial()
        kern(xpad, 3, 1, 7, 7, 5, 5, out_s)
    assert not threads.is_serial()
    np.testing.assert_array_equal(out_s, out_p)
    assert kern.serial.signatures and kern.parallel.signatures


LATENCY_DRIVER = r"""
import importlib.util, json, sys
import numpy as np
import engine
from layers import threads
layer = engine.latency_mode()              # first: before any parallel kernel
from threadpoolctl import threadpool_info
net = engine.load(sys.argv[1])
x = np.random.default_rng(0).standard_normal((1,) + net.input_shape).astype(np.float32)
convs = [n.layer for n in net._nodes if n.type == "conv"]
y1 = net.forward(x).copy()
direct1 = sum(c._on_direct for c in convs)
threads.set_latency(False)
y0 = net.forward(x)
print(json.dumps({"layer": layer, "omp": importlib.util.find_spec("numba.np.ufunc.omppool") is not None,
                  "diff": float(np.abs(y1 - y0).max()), "direct1": direct1,
                  "direct0": sum(c._on_direct for c in convs), "rule": sum(c.direct for c in convs),
                  "convs": len(convs),
                  "blas": [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]}))
"""


def test_latency_mode_process():
    """engine.latency_mode() (`predict` runs its block form): OpenMP's workers where Numba has
    them, BLAS on one thread, every convolution of a batch-1 forward on the direct path
    (the digits ResNet's 288-tap stride-2 one too), the same probabilities as the rule's
    paths within float32 rounding."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}     # conftest's pin
    out = subprocess.run([sys.executable, "-c", LATENCY_DRIVER, os.path.join(root, "nets", "resnet-digits.yaml")],
                         capture_output=True, text=True, cwd=root, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["layer"] == ("omp" if r["omp"] else "workqueue")
    assert r["blas"] and set(r["blas"]) == {1}
    assert r["direct1"] == r["convs"] > r["rule"] == r["direct0"]
    assert r["diff"] < 1e-5


def test_single_images_is_latency_mode_for_a_block():
    """What `predict` runs in: threads.latency() and BLAS on one thread inside the block,
    both as they were after it (an in-process predict leaves the process as it found it)."""
    from threadpoolctl import threadpool_info

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    before = blas()
    assert not threads.latency() and before
    with columns.single_images():
        assert threads.latency() and set(blas()) == {1}
    assert not threads.latency() and blas() == before
