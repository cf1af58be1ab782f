"""Three and four columns on CUDA (a stream per column): the same outputs and gradients as the
same weights folded onto one column (on CUDA too), and, for four columns, as the CPU.

The nets are helpers.many_columns_net, tiny: the simulator runs each CUDA thread as a Python
thread (a forward and backward of the four-column net costs it about a minute, so each
column net runs once per module and the tests compare what it gave; the whole file takes
about 2.5 minutes on 2 cores). tests/test_many_columns.py checks the same nets on the CPU.
"""
import numpy as np
import pytest

import engine
from helpers import (close, column_names, fold_activation, fold_columns, folded_net, many_columns_batch,
                     many_columns_net)

ACTIVATIONS = ("c1", "n1", "p1", "c2", "f3")      # per column, folded by concatenation
SEED = 2


def column_outputs(n):
    return [col for name in ACTIVATIONS for col in column_names(name, n)] + ["f4", "prob"]


def run(net, outputs, seed=5):
    """(activations, loss, gradients) of one batch of two images (two: a join that mixed up
    the images would pass with one)."""
    x, labels = many_columns_batch(2, seed=seed)
    acts = net.forward(x, outputs=outputs)
    loss, grads = net.gradients(x, labels)
    return acts, loss, grads


@pytest.fixture(scope="module")
def on_cuda():
    """n -> (net, activations, loss, gradients) of the n-column net on CUDA, run once."""
    done = {}

    def get(n):
        if n not in done:
            net = engine.load(many_columns_net(n), seed=SEED, device="cuda")
            done[n] = (net,) + run(net, column_outputs(n))
        return done[n]
    return get


def check_streams(net, n):
    """A stream per column: each column's layers on one, no two columns on the same."""
    assert net.device == "cuda"
    assert len(net.backend.streams) == n
    lanes = {}
    for node in net.layers:
        lanes.setdefault(node.gpu, set()).add(net.backend.lane_of(node))
    assert sorted(lanes) == list(range(n))
    assert all(len(s) == 1 for s in lanes.values())
    assert sorted(lane for s in lanes.values() for lane in s) == list(range(n))


@pytest.mark.parametrize("n", [3, 4])
def test_columns_equal_the_folded_net_on_cuda(n, on_cuda):
    many, got, loss_m, g_m = on_cuda(n)
    check_streams(many, n)
    one = engine.load(folded_net(n), device="cuda")
    one.load_state_dict(fold_columns(many.state_dict(), n))
    want, loss_o, g_o = run(one, list(ACTIVATIONS) + ["f4", "prob"])
    for name in ACTIVATIONS:
        close(fold_activation(got, name, n), want[name])
    close(got["f4"], want["f4"])
    close(got["prob"], want["prob"])
    assert np.abs(want["f3"]).max() > 0 and np.ptp(want["prob"]) > 1e-3    # not a dead net
    assert loss_m == pytest.approx(loss_o, rel=1e-5)
    folded = fold_columns(g_m, n)
    assert folded.keys() == g_o.keys()
    for key in g_o:
        assert np.abs(g_o[key]).max() > 0, key                   # every gradient is exercised
        close(folded[key], g_o[key])


def test_four_columns_on_cuda_equal_the_cpu(on_cuda):
    n = 4
    gpu, got, loss_g, g_g = on_cuda(n)
    cpu = engine.load(many_columns_net(n), seed=SEED, threading="columns")
    assert cpu.threading_mode == "columns"
    a, b = cpu.state_dict(), gpu.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)   # the same weights
    want, loss_c, g_c = run(cpu, column_outputs(n))
    for name in want:        # every column's layers, the joins across the streams, the result
        close(got[name], want[name])
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    assert g_c.keys() == g_g.keys()
    for k in g_c:
        close(g_g[k], g_c[k])
