"""The counter-based generator of the dropout masks (layers.draw_key): a mask is a pure
function of (seed, epoch, step, layer, global sample index, element index), so slices of a
batch with their global offsets (a data-parallel run's ranks, a split batch's halves),
another batch size, the serial kernels and every threading mode draw the same mask. The
NumPy reference (layers/dropout/reference.py) is the definition; the bits also pass
statistical checks. CPU against CUDA: tests/cuda/test_dropout_keyed_cuda.py."""
import numpy as np
import pytest
from helpers import distinct

import engine
import layers
from layers import threads
from layers.draw_key import DrawKey
from layers.dropout import reference

CASES = {"dropout": ({"rate": 0.4}, 0.4), "dropout2": ({"keep": 0.6}, 0.4)}    # cfg, drop rate


def make(type_name, shape, name="drop"):
    return layers.get(type_name)(name, CASES[type_name][0], [shape])


def mask(layer, x, key):
    """The kept units of a training pass (x holds no zeros)."""
    return layer.forward(x, {}, train=True, rng=key) != 0


@pytest.mark.parametrize("type_name", CASES)
def test_slices_with_their_offsets_draw_the_whole_batch_mask(type_name):
    x = distinct((8, 3, 5, 7))       # an even size: no zero
    layer = make(type_name, x.shape[1:])
    key = DrawKey(3, epoch=1, step=4, sample_offset=2)
    whole = layer.forward(x, {}, train=True, rng=key).copy()
    want = reference.kept("drop", x.shape, CASES[type_name][1], 3, 1, 4, sample_offset=2)
    np.testing.assert_array_equal(whole != 0, want)
    for k in (1, 4, 7):
        first = layer.forward(x[:k], {}, train=True, rng=key).copy()
        rest = layer.forward(x[k:], {}, train=True, rng=key.rows_from(k))
        np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    # backward follows the latest forward's (sliced) mask
    dx = layer.backward(np.ones_like(x[7:]), {})[0]
    np.testing.assert_array_equal(dx != 0, want[7:])


def test_a_samples_mask_does_not_depend_on_the_batch_size():
    layer = make("dropout", (40,))
    key = DrawKey(8, step=2)
    big = mask(layer, distinct((9, 40)), key)
    np.testing.assert_array_equal(mask(layer, distinct((3, 40)), key), big[:3])
    np.testing.assert_array_equal(mask(layer, distinct((2, 40)), key.rows_from(5)), big[5:7])


def test_counters_past_two_to_the_32_follow_the_reference():
    # sample 5e6 of 1000 units: counters near 5e9, the hash's high word in play
    x = distinct((3, 1000))
    key = DrawKey(2**40 + 5, epoch=3, step=2**33 + 1, sample_offset=5_000_000)
    want = reference.kept("drop", x.shape, 0.4, 2**40 + 5, 3, 2**33 + 1, sample_offset=5_000_000)
    np.testing.assert_array_equal(mask(make("dropout", (1000,)), x, key), want)


def test_serial_kernel_draws_the_parallel_kernels_mask():
    x = distinct((3, 12000))          # three of the kernel's 16384-unit chunks
    layer = make("dropout", (12000,))
    key = DrawKey(4, sample_offset=11)
    with threads.serial(True):
        serial = mask(layer, x, key)
    with threads.serial(False):
        np.testing.assert_array_equal(mask(layer, x, key), serial)


def agree_within(a, b, rate):
    """Two independent masks agree on a unit with probability (1-rate)^2 + rate^2: within
    5 binomial std (a false failure ~ 6e-7)."""
    p = (1 - rate) ** 2 + rate ** 2
    return abs((a == b).mean() - p) < 5 * np.sqrt(p * (1 - p) / a.size)


def test_every_part_of_the_key_draws_an_independent_mask():
    x = np.ones((8, 2500), np.float32)
    base = mask(make("dropout", (2500,)), x, DrawKey(1, 2, 3))
    others = [mask(make("dropout", (2500,)), x, DrawKey(2, 2, 3)),
              mask(make("dropout", (2500,)), x, DrawKey(1, 3, 3)),
              mask(make("dropout", (2500,)), x, DrawKey(1, 2, 4)),
              mask(make("dropout", (2500,), name="drop2"), x, DrawKey(1, 2, 3))]
    for other in others:
        assert agree_within(base, other, 0.4)
    # neighbouring samples and neighbouring units are independent too
    assert agree_within(base[1:], base[:-1], 0.4)
    assert agree_within(base[:, 1:], base[:, :-1], 0.4)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_kept_fraction_at_several_rates(rate):
    n = 1 << 16
    layer = layers.get("dropout")("d", {"rate": rate}, [(n // 16,)])
    kept = mask(layer, np.ones((16, n // 16), np.float32), DrawKey(6))
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)


NET = """
name: keyed
input: {shape: [2, 3, 3]}
defaults: {init_w: 0.3, init_b: 0.1}
layers:
  - {name: f1, type: fc, outputs: 12, neuron: tanh}
  - {name: d1, type: dropout, rate: 0.5}
  - {name: f2, type: fc, outputs: 10, neuron: tanh}
  - {name: d2, type: dropout2, keep: 0.7}
  - {name: f3, type: fc, outputs: 4}
  - {name: prob, type: softmax}
"""


def data(n=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 2, 3, 3)).astype(np.float32), rng.integers(0, 4, n)


def test_threading_modes_draw_the_same_masks():
    net = engine.load(NET, seed=1)
    net.draw_key = DrawKey(5, epoch=1, step=3)
    x, labels = data()
    out = {}
    for mode in ("layers", "batch"):          # batch: each half of 16 on its own copy
        net.threading = mode
        acts = net.forward(x, train=True, outputs=["d1", "d2"])
        out[mode] = ({k: a != 0 for k, a in acts.items()}, net.gradients(x, labels, train=True))
    (masks_l, (loss_l, grads_l)), (masks_b, (loss_b, grads_b)) = out["layers"], out["batch"]
    assert len(net.executor.copies) == 2
    for k in masks_l:
        np.testing.assert_array_equal(masks_b[k], masks_l[k], err_msg=k)
    assert loss_b == pytest.approx(loss_l, rel=1e-6)
    for k in grads_l:
        np.testing.assert_allclose(grads_b[k], grads_l[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_ranks_slices_with_their_offsets_sum_to_the_whole_batch_gradient():
    # what a data-parallel run does: rank r computes rows [a, b) of the global batch with
    # sample_offset a; the per-rank mean gradients, weighted by rows, give the whole batch's
    x, labels = data()
    whole = engine.load(NET, seed=2, threading="layers")
    whole.draw_key = DrawKey(7, epoch=2, step=5)
    loss, grads = whole.gradients(x, labels, train=True)
    rank = engine.load(NET, seed=2, threading="layers")
    total, summed = 0.0, {k: np.zeros_like(g, dtype=np.float64) for k, g in grads.items()}
    for a, b in ((0, 6), (6, 16)):
        rank.draw_key = DrawKey(7, epoch=2, step=5, sample_offset=a)
        part_loss, part = rank.gradients(x[a:b], labels[a:b], train=True)
        total += part_loss * (b - a) / len(x)
        for k, g in part.items():
            summed[k] += g * (b - a) / len(x)
    assert total == pytest.approx(loss, rel=1e-6)
    for k in grads:
        np.testing.assert_allclose(summed[k], grads[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_net_draw_key_holds_until_changed_else_each_pass_draws_from_rng():
    net = engine.load(NET, seed=3, threading="layers")
    x, _ = data(4)

    def masks():
        return {k: a != 0 for k, a in net.forward(x, train=True, outputs=["d1", "d2"]).items()}
    net.draw_key = DrawKey(9, step=1)
    a, b = masks(), masks()
    net.draw_key = DrawKey(9, step=2)
    c = masks()
    net.draw_key = None
    state = net.rng.bit_generator.state
    d, e = masks(), masks()
    net.rng.bit_generator.state = state
    f = masks()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(d[k], f[k])          # restoring rng replays a pass
        assert not np.array_equal(a[k], c[k]) and not np.array_equal(d[k], e[k])
