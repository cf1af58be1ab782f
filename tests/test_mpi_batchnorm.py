"""batchnorm under data-parallel training: the global batch's statistics (Layer.batch_sum).

In one process: the parts of a batch as ranks hold them (tests/batch_parts.py: threads taking
turns) against the NumPy reference of the whole batch: outputs, input gradients (in units of
each part's own mean loss), the parameter gradients the exchange sums, the running
statistics; a part may be empty. The engine: such a net runs one layer after another, a
rank with an empty share makes the same collectives (Executor.empty_step), and a layer with
state but no batch statistics is refused. Then real `mpirun -n 2` trainings against one
process: a conv+batchnorm+relu and fc+batchnorm net whose last batch is uneven, and a job
whose last global batch of one image leaves rank 0 nothing."""
import types

import numpy as np
import pytest
from batch_parts import TakingTurns, bounds, part_dy
from test_mpi import assert_close_runs, mpirun, needs_mpi, one_process, params, write

import engine
import layers
from engine import columns
from engine.errors import ConfigError
from engine.train import Trainer
from layers.base import Layer
from layers.batchnorm import reference

SHAPES = [(3, 5, 7), (6,)]          # after a conv, after an fc
SPLITS = [(5, 3), (8, 0), (0, 8), (3, 2, 3)]


def make(shape, **cfg):
    return layers.get("batchnorm")("bn", cfg, [shape])


def start_params(layer, seed=0):
    rng = np.random.default_rng(seed)
    c = layer.channels
    return {"weight": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": rng.standard_normal(c).astype(np.float32),
            "running_mean": rng.standard_normal(c).astype(np.float32),
            "running_var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def train_parts(shape, neuron, sizes, x, dy, need_dx=True):
    """Each part's (y, dx times its share, {param: grad times its share}, its params after the
    state update), from layers whose batch_sum sums over the parts, and the batch_sum calls."""
    n = x.shape[0]
    turns = TakingTurns(len(sizes))
    out = [None] * len(sizes)

    def part(r, a, b):
        layer = make(shape, neuron=neuron, momentum=0.3)
        layer.batch_sum = turns.batch_sum(r)
        p = start_params(layer)
        y = layer.forward(x[a:b], p, train=True).copy()
        layer.update_state(p)
        dx, grads = layer.backward(part_dy(dy, a, b), p, need_dx=need_dx)
        share = np.float32((b - a) / n)
        out[r] = (y, None if dx is None else dx * share, {k: g * share for k, g in grads.items()}, p)
    turns.run([lambda r=r, a=a, b=b: part(r, a, b) for r, (a, b) in enumerate(bounds(sizes))])
    return out, turns.calls


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sizes", SPLITS, ids=lambda s: "+".join(map(str, s)))
@pytest.mark.parametrize("neuron", [None, "relu"])
def test_parts_of_a_batch_train_as_the_whole_batch(shape, sizes, neuron):
    n = sum(sizes)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n,) + shape) * 2 + 1.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    parts, calls = train_parts(shape, neuron, sizes, x, dy)
    assert calls == [3] * len(sizes)            # the sums and count, the deviations, the gradients
    p = start_params(make(shape))
    x3 = x.reshape(n, shape[0], -1).astype(np.float64)
    mean, var = reference.statistics(x3)
    want_y, _ = reference.forward(x3, p["weight"], p["bias"], mean, var, 1e-5, neuron)
    want_dx, want_dw, want_db = reference.backward(dy.reshape(want_y.shape).astype(np.float64), x3, p["weight"],
                                                   p["bias"], mean, var, 1e-5, True, neuron)
    want_m, want_v = reference.update_running(p["running_mean"], p["running_var"], mean, var, 0.3,
                                              x3.shape[0] * x3.shape[2])
    y = np.concatenate([y for y, _, _, _ in parts])
    dx = np.concatenate([dx for _, dx, _, _ in parts])
    np.testing.assert_allclose(y.reshape(want_y.shape), want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.reshape(want_dx.shape), want_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sum(g["weight"] for _, _, g, _ in parts), want_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sum(g["bias"] for _, _, g, _ in parts), want_db, rtol=1e-4, atol=1e-4)
    for _, _, _, state in parts:           # every part keeps the same running statistics
        np.testing.assert_allclose(state["running_mean"], want_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["running_var"], want_v, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(state["running_var"], parts[0][3]["running_var"])


def test_no_input_gradient_no_gradient_sum_and_evaluation_sums_nothing():
    shape = (3, 5, 7)
    x = np.random.default_rng(2).standard_normal((6,) + shape).astype(np.float32)
    _, calls = train_parts(shape, None, (4, 2), x, x, need_dx=False)
    assert calls == [2, 2]                      # dweight, dbias stay each part's own sums
    layer = make(shape)
    layer.batch_sum = lambda values: pytest.fail("evaluation summed over the parts")
    layer.forward(x, start_params(layer), train=False)


def test_too_few_values_in_the_global_batch_are_refused_on_every_part():
    x = np.ones((1, 6), np.float32)
    with pytest.raises(ValueError, match="more than one value per channel.*a batch of 1 x 1"):
        train_parts((6,), None, (0, 1), x, x)


# ---- the engine -----------------------------------------------------------------------------
NET = """\
name: bn
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, init_w: 0.1, bias: false}
  - {name: bn1, type: batchnorm, neuron: relu}
  - {name: pool1, type: pool, mode: max, size: 2}
  - {name: fc1, type: fc, outputs: 32, neuron: tanh, init_w: 0.05}
  - {name: bn2, type: batchnorm, momentum: 0.2}
  - {name: drop1, type: dropout, rate: 0.5}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
train: {data: "synthetic:95", epochs: 2, batch: 30, lr: 0.05, augment: {shift: 1, flip: true}}
"""

# two columns, each with a batchnorm; the last global batch of 1 image leaves rank 0 nothing.
# In both nets no bias right before a batchnorm (its gradient is zero but for rounding, which no
# relative tolerance compares), and no relu (tanh) before bn2: a unit dead on nearly the whole
# batch has a variance near 0, and 1/sqrt(var + eps) multiplies float rounding by up to ~300
EMPTY_SHARE = """\
name: bn-empty
input: {shape: [1, 12, 12]}
layers:
  - {name: c1a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, padding: 1, init_w: 0.1, bias: false}
  - {name: c1b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, padding: 1, init_w: 0.1, bias: false}
  - {name: bn1a, type: batchnorm, inputs: [c1a], gpu: 0, neuron: relu}
  - {name: bn1b, type: batchnorm, inputs: [c1b], gpu: 1, neuron: relu}
  - {name: p1a, type: pool, inputs: [bn1a], gpu: 0, mode: max, size: 2}
  - {name: p1b, type: pool, inputs: [bn1b], gpu: 1, mode: max, size: 2}
  - {name: f2, type: fc, inputs: [p1a, p1b], outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
train: {data: "synthetic:31", epochs: 2, batch: 30, lr: 0.05}
"""


def test_a_net_summing_over_processes_runs_one_layer_after_another():
    net = engine.load(EMPTY_SHARE)
    net.threading = "columns"
    assert net.threading_mode == "columns"
    for node in net.layers:
        if node.layer.whole_batch:
            node.layer.batch_sum = lambda values: None
    for mode in ("columns", "auto"):
        net.threading = mode
        assert net.threading_mode == "layers" and "bn1a" in net.threading_reason


def test_an_empty_share_makes_the_collectives_of_a_full_one():
    """The batch_sum calls of a step over no image (Executor.empty_step) are those of a step
    over some, layer by layer in the same order, and the running statistics move alike."""
    def calls_of(step):
        net = engine.load(EMPTY_SHARE)
        seen = []

        def batch_sum(values, name):
            seen.append((name, values.size))
            values[:] = 0.0
            if values.size % 2:          # [C sums, count] (C = 4): as if all values were zeros, 60 of them
                values[-1] = 60
        for node in net.layers:
            if node.layer.whole_batch:
                node.layer.batch_sum = lambda values, name=node.name: batch_sum(values, name)
        net.threading = "auto"
        step(net)
        return seen, net
    x = np.random.default_rng(0).standard_normal((3, 1, 12, 12)).astype(np.float32)
    full, _ = calls_of(lambda net: net.loss_and_grads(x, np.array([0, 1, 2])))
    empty, net = calls_of(lambda net: net.executor.empty_step())
    assert empty == full and [name for name, _ in full[:4]] == ["bn1a", "bn1a", "bn1b", "bn1b"]
    assert len(full) == 6 and full[4][0] == "bn1b"      # backward in reverse
    state = net.state_dict()
    np.testing.assert_array_equal(state["bn1a.running_mean"], 0)        # 0.9 * 0 + 0.1 * 0
    np.testing.assert_allclose(state["bn1a.running_var"], 0.9, rtol=1e-6)      # 0.9 * 1 + 0.1 * 0


def test_a_layer_with_state_but_no_batch_statistics_is_refused():
    class Counter(Layer):
        type = "counter"

        def state_shapes(self):
            return {"seen": (1,)}
    node = types.SimpleNamespace(name="count1", layer=Counter("count1", {}, [(4,)]))
    bn = types.SimpleNamespace(name="bn1", layer=make((4,)))
    world = types.SimpleNamespace(size=2, batch_sum=lambda values: None)
    trainer = types.SimpleNamespace(net=types.SimpleNamespace(layers=[bn, node], threading="auto"), world=world,
                                    spec=types.SimpleNamespace(file="net.yaml"))
    with pytest.raises(ConfigError, match="count1.*each rank's share alone"):
        Trainer._check_distributable(trainer)
    assert bn.layer.batch_sum is world.batch_sum
    assert columns.needs_whole_batch(node.layer)


# ---- real mpirun jobs -------------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("text", [NET, EMPTY_SHARE], ids=["uneven-last-batch", "empty-share"])
def test_two_ranks_train_a_batchnorm_net_as_one_process(tmp_path, text):
    net = write(tmp_path, "net.yaml", text)
    one_process(net, tmp_path / "one")
    rc, _, err = mpirun(2, net, "--out", str(tmp_path / "two"), timeout=180)
    assert rc == 0, err[-3000:]
    assert_close_runs(tmp_path / "one", tmp_path / "two")      # every array: weights and running statistics
    assert len([k for k in params(tmp_path / "two")[0] if "running" in k]) == 4
