"""Three and four columns on the CPU (engine.columns: a thread per column): the same outputs
and gradients as the same weights folded onto one column, in every threading mode, and the
rule that runs them on a thread each only where there are as many cores.

The nets (helpers.many_columns_net) join the columns as cuda-convnet's AlexNet does: a conv
per column on the data, a conv per column reading every column, an fc per column reading
every column, one fc and the softmax; the folded net concatenates the columns' filters and
outputs in column order (helpers.fold_columns).
"""
import threading

import numpy as np
import pytest

import engine
from engine import columns
from helpers import (close, column_names, fold_activation, fold_columns, folded_net, many_columns_batch,
                     many_columns_net)

NS = (3, 4)
BATCH = 8             # columns.MIN_SPLIT: threading "batch" splits it in two
ACTIVATIONS = ("c1", "n1", "p1", "c2", "f3")      # per column, folded by concatenation


def nets(n, threading_mode="columns", seed=2):
    """The n-column net and the folded net holding its weights (the fold runs "layers")."""
    many = engine.load(many_columns_net(n), seed=seed, threading=threading_mode)
    one = engine.load(folded_net(n), threading="layers")
    one.load_state_dict(fold_columns(many.state_dict(), n))
    return many, one


def column_outputs(n):
    return [col for name in ACTIVATIONS for col in column_names(name, n)] + ["f4", "prob"]


def compare(many, one, n, seed=5):
    """many's activations (folded) and gradients (folded) against one's."""
    x, labels = many_columns_batch(BATCH, seed=seed)
    got = many.forward(x, outputs=column_outputs(n))
    want = one.forward(x, outputs=list(ACTIVATIONS) + ["f4", "prob"])
    for name in ACTIVATIONS:
        close(fold_activation(got, name, n), want[name])
    close(got["f4"], want["f4"])
    close(got["prob"], want["prob"])
    close(many.forward(x), want["prob"])
    assert np.abs(want["f3"]).max() > 0 and np.ptp(want["prob"]) > 1e-3    # not a dead net

    loss_m, g_m = many.gradients(x, labels)
    loss_o, g_o = one.gradients(x, labels)
    assert loss_m == pytest.approx(loss_o, rel=1e-5)
    folded = fold_columns(g_m, n)
    assert folded.keys() == g_o.keys()
    for key in g_o:
        assert np.abs(g_o[key]).max() > 0, key                   # every gradient is exercised
        close(folded[key], g_o[key])


@pytest.mark.parametrize("n", NS)
def test_columns_equal_the_folded_net(n):
    many, one = nets(n, "columns")
    assert many.threading_mode == "columns"
    assert sorted({node.gpu for node in many.layers}) == list(range(n))
    assert [many.backend.lane_of(node) for node in many.layers] == [node.gpu for node in many.layers]
    compare(many, one, n)


@pytest.mark.parametrize("mode", ["batch", "layers"])
@pytest.mark.parametrize("n", NS)
def test_batch_and_layers_threading_equal_the_folded_net(n, mode):
    many, one = nets(n, mode)
    assert many.threading_mode == mode
    assert many.backend.split_from == (columns.MIN_SPLIT if mode == "batch" else None)
    assert BATCH >= columns.MIN_SPLIT
    compare(many, one, n)


@pytest.mark.parametrize("n", NS)
def test_every_mode_gives_the_same_numbers(n):
    x, labels = many_columns_batch(BATCH, seed=9)
    net = engine.load(many_columns_net(n), seed=4)
    runs = {}
    for mode in ("layers", "columns", "batch"):
        net.threading = mode
        assert net.threading_mode == mode
        runs[mode] = net.forward(x), net.gradients(x, labels)
    out_l, (loss_l, grads_l) = runs["layers"]
    for mode in ("columns", "batch"):
        out, (loss, grads) = runs[mode]
        close(out, out_l)
        assert loss == pytest.approx(loss_l, rel=1e-5)
        assert grads.keys() == grads_l.keys()
        for k in grads_l:
            close(grads[k], grads_l[k])


@pytest.mark.parametrize("n", NS)
def test_each_column_runs_on_a_thread_of_its_own(n):
    net = engine.load(many_columns_net(n), seed=3, threading="columns")
    assert net.threading_mode == "columns"
    seen = {}
    for node in net.layers:
        for phase in ("forward", "backward"):
            original = getattr(node.layer, phase)

            def spy(*a, _key=(node.name, phase), _f=original, **k):
                seen[_key] = threading.current_thread().name
                return _f(*a, **k)
            setattr(node.layer, phase, spy)
    net.gradients(*many_columns_batch(2))
    gpu = {node.name: node.gpu for node in net.layers}
    assert {name for name, _ in seen} == set(gpu)
    for phase in ("forward", "backward"):
        lanes = {}
        for node in net.layers:
            if (node.name, phase) in seen:
                lanes.setdefault(gpu[node.name], set()).add(seen[node.name, phase])
        assert all(len(threads) == 1 for threads in lanes.values()), (phase, lanes)  # a column keeps its thread
        assert len(set().union(*lanes.values())) == n, (phase, lanes)                # n threads at once
    assert seen["c1a", "forward"] == seen["f4", "forward"] == threading.current_thread().name


@pytest.mark.parametrize("n", NS)
def test_columns_are_chosen_only_with_a_core_per_column(n, monkeypatch):
    monkeypatch.delenv(columns.ENV, raising=False)
    net = engine.load(many_columns_net(n))
    work = columns.column_work(net.layers)
    assert sorted(work) == list(range(n))
    assert min(work.values()) >= 0.5 / n * sum(work.values())      # balanced: cores decide
    assert columns.choose(net.layers, "auto", cpus=1) == ("layers", "one CPU core")
    for cpus in range(2, n):
        mode, why = columns.choose(net.layers, "auto", cpus=cpus)
        assert mode == "batch", cpus
        assert why.startswith(f"{n} columns on {cpus} cores: "), why
    for cpus in (n, n + 1, 8):
        mode, why = columns.choose(net.layers, "auto", cpus=cpus)
        assert mode == "columns", cpus
        assert why.startswith(f"{n} columns of ") and why.endswith(f"on {n} threads"), why
    # asked for, columns run whatever the cores
    assert columns.choose(net.layers, "columns", cpus=1)[0] == "columns"
    assert engine.load(many_columns_net(n), threading="columns").threading_mode == "columns"
