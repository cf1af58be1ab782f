"""The gradient exchange overlaps backward (engine.distributed.GradientExchange, Executor.on_grads):
in one process with a fake communicator that records when each bucket's Iallreduce starts,
against the backward of each layer. A bucket starts before backward has finished, the
buckets start in bucket order whichever lane finished first (columns on threads), from the
main thread alone where MPI allows no other, and the sums are the gradients times the share
(the fake allreduce doubles: two ranks with the same gradients)."""
import threading

import numpy as np
import pytest

import engine
from engine.distributed import GradientExchange

NET = """\
name: overlap
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: pool1, type: pool, mode: max, size: 2}
  - {name: fc1, type: fc, outputs: 32, neuron: relu, init_w: 0.05}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
"""

TWO_COLUMNS = """\
name: twocol
input: {shape: [1, 12, 12]}
layers:
  - {name: c1a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: c1b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: f2a, type: fc, inputs: [c1a], gpu: 0, outputs: 16, neuron: relu, init_w: 0.05}
  - {name: f2b, type: fc, inputs: [c1b], gpu: 1, outputs: 16, neuron: relu, init_w: 0.05}
  - {name: f3, type: fc, inputs: [f2a, f2b], gpu: 0, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
"""


class FakeMPI:
    """What GradientExchange uses of mpi4py's MPI, recording into `events`."""
    IN_PLACE, SUM, THREAD_SERIALIZED = object(), "sum", 2

    def __init__(self, events, level):
        self.events, self.level = events, level
        self.Request = self

    def Query_thread(self):
        return self.level

    def Testall(self, requests):
        return False

    def Waitall(self, requests):
        self.events.append(("wait all", len(requests)))


class FakeComm:
    def __init__(self, events, buckets):
        self.events, self.buckets = events, buckets

    def Iallreduce(self, where, flat, op):
        assert where is FakeMPI.IN_PLACE and op == "sum"
        index = next(i for i, (f, _) in enumerate(self.buckets) if f is flat)
        self.events.append(("start", index, threading.current_thread() is threading.main_thread()))
        flat *= 2.0                     # two ranks with these gradients
        return index


def exchange_for(net, level=3, bucket_floats=300):
    events = []
    world = type("World", (), {})()
    world.bucket_bytes, world.MPI = 4 * bucket_floats, FakeMPI(events, level)
    ex = GradientExchange(world, {k: v.shape for k, v in net.parameters().items()}, net.backend)
    world.comm = FakeComm(events, ex.buckets)
    net.executor.on_grads = ex.add
    backward = net.backend.backward

    def recorded(node, dy, need_dx):
        out = backward(node, dy, need_dx)
        events.append(("backward", node.name))
        return out
    net.backend.backward = recorded
    return ex, events


def batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)).astype(np.float32), rng.integers(0, 4, n)


def check_sums(ex, grads, share):
    summed = ex.finish(grads)
    for key, g in grads.items():
        np.testing.assert_array_equal(summed[key], (np.asarray(g) * np.float32(share)) * 2)


@pytest.mark.parametrize("threading_mode", ["layers", "batch"])
def test_buckets_start_before_backward_ends(threading_mode):
    net = engine.load(NET)
    net.threading = threading_mode
    ex, events = exchange_for(net)
    assert len(ex.buckets) >= 3
    x, y = batch()
    ex.start(0.25)
    _, grads = net.loss_and_grads(x, y)
    starts = [i for i, e in enumerate(events) if e[0] == "start"]
    last_backward = max(i for i, e in enumerate(events) if e[0] == "backward")
    if threading_mode == "layers":
        assert starts and starts[0] < last_backward          # overlapping the rest of backward
    assert [events[i][1] for i in starts] == list(range(len(starts)))
    check_sums(ex, grads, 0.25)
    assert [e[1] for e in events if e[0] == "start"] == list(range(len(ex.buckets)))
    assert events[-1] == ("wait all", len(ex.buckets))


@pytest.mark.parametrize("level", [3, 1], ids=["any-thread", "main-thread-only"])
def test_columns_on_threads_start_the_buckets_in_order(level):
    net = engine.load(TWO_COLUMNS)
    net.threading = "columns"
    assert net.threading_mode == "columns"
    ex, events = exchange_for(net, level=level, bucket_floats=100)
    x, y = batch(seed=1)
    for step in range(3):
        events.clear()
        ex.start(0.5)
        _, grads = net.loss_and_grads(x, y)
        check_sums(ex, grads, 0.5)
        starts = [e for e in events if e[0] == "start"]
        assert [e[1] for e in starts] == list(range(len(ex.buckets)))
        if level < FakeMPI.THREAD_SERIALIZED:
            assert all(on_main for _, _, on_main in starts)


def test_an_empty_share_starts_every_bucket_in_order_with_zeros():
    net = engine.load(NET)
    ex, events = exchange_for(net)
    ex.start(0.0)
    summed = ex.finish(None)
    assert [e[1] for e in events if e[0] == "start"] == list(range(len(ex.buckets)))
    assert all(not v.any() for v in summed.values())
    ex.add("fc2", {"weight": np.ones((4, 32), np.float32)})       # between steps: ignored
    assert not summed["fc2.weight"].any()
