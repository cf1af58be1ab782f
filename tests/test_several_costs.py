"""Several weighted cost layers (GoogLeNet's auxiliary heads): the loss is the weighted sum of
the heads' costs, gradients flow from every head, the output (forward, predict, top-k, test)
is the net's last unread layer."""
import json

import numpy as np
import pytest

import engine
import helpers
from engine.tools import check_grads, draw
from engine.train import evaluate

# two auxiliary heads (weight 0.3, as GoogLeNet's) on a small net
AUX = """name: aux-heads
input: {shape: [3, 10, 10]}
layers:
  - {name: conv1, type: conv, filters: 4, size: 3, padding: 1, neuron: tanh, init_w: 0.3}
  - {name: down1, type: conv, filters: 4, size: 2, stride: 2, init_w: 0.3}
  - {name: aux1_fc, type: fc, outputs: 5, inputs: down1, init_w: 0.2}
  - {name: aux1, type: softmax, coeff: 0.3}
  - {name: conv2, type: conv, filters: 6, size: 3, padding: 1, neuron: tanh, inputs: down1, init_w: 0.3}
  - {name: aux2_fc, type: fc, outputs: 5, init_w: 0.2}
  - {name: aux2, type: softmax, coeff: 0.3}
  - {name: fc, type: fc, outputs: 5, inputs: conv2, init_w: 0.2}
  - {name: prob, type: softmax}
"""
X = np.random.default_rng(0).standard_normal((6, 3, 10, 10)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 4, 0])


def xent(p, y):
    """Mean cross-entropy in float64: the reference of a softmax head's cost."""
    return float(-np.mean(np.log(p[np.arange(len(y)), y].astype(np.float64))))


HEADS = {"aux1": ["conv1", "down1", "aux1_fc", "aux1"], "aux2": ["conv1", "down1", "conv2", "aux2_fc", "aux2"],
         "prob": ["conv1", "down1", "conv2", "fc", "prob"]}


def head_alone(head):
    """The net with only `head` (as its output, unweighted) and the layers it reads."""
    lines = [line for line in AUX.splitlines()
             if "{name:" not in line or any(f"name: {n}," in line for n in HEADS[head])]
    return "\n".join(lines).replace(", coeff: 0.3", "") + "\n"


def test_heads_run_in_order_with_the_output_last():
    net = engine.load(AUX)
    assert net.layers[-1].name == net.output_layer.name == "prob"
    assert [(n.name, w) for n, w in net.cost_heads] == [("aux1", 0.3), ("aux2", 0.3), ("prob", 1.0)]
    assert net.num_classes == 5 and net.classifies


def test_loss_is_the_weighted_sum_of_the_heads_costs():
    net = engine.load(AUX)
    acts = net.forward(X, outputs=["aux1", "aux2", "prob"])
    want = 0.3 * xent(acts["aux1"], Y) + 0.3 * xent(acts["aux2"], Y) + xent(acts["prob"], Y)
    loss, _ = net.gradients(X, Y)
    assert loss == pytest.approx(want, rel=1e-6)
    assert net.loss(X, Y) == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(net.forward(X), acts["prob"])       # the output is the main head


def test_gradients_are_the_weighted_sum_of_each_heads_gradients():
    net = engine.load(AUX, seed=3)
    state = net.state_dict()
    _, total = net.gradients(X, Y)
    want = {k: np.zeros(v.shape) for k, v in total.items()}
    for head, weight in (("prob", 1.0), ("aux1", 0.3), ("aux2", 0.3)):
        part = engine.load(head_alone(head))
        assert part.output_layer.name == head and len(part.cost_heads) == 1
        part.load_state_dict({k: state[k] for k in part.state_dict()})
        _, grads = part.gradients(X, Y)
        for k, g in grads.items():
            want[k] += weight * g
    for k in total:
        helpers.close(total[k], want[k], rtol=1e-4, atol=1e-6)


def test_gradients_against_finite_differences():
    net = engine.load(AUX, seed=1)
    helpers.check_net_gradients(net, X, Y,
                                ["conv1.weight", "aux1_fc.weight", "aux2_fc.bias", "conv2.weight", "fc.weight"],
                                h=1e-2, samples=4, rel=3e-2, abs=2e-4)
    results = check_grads.check_net(engine.load(AUX, seed=2))
    assert [r["layer"] for r in results if not r["passed"]] == []
    assert {r["layer"] for r in results} == {"conv1", "down1", "aux1_fc", "conv2", "aux2_fc", "fc"}


def test_a_sum2_head_keeps_its_own_coeff():
    text = AUX.replace("- {name: aux2, type: softmax, coeff: 0.3}", "- {name: aux2, type: sum2, coeff: 0.25}")
    net = engine.load(text)
    assert [(n.name, w) for n, w in net.cost_heads][1] == ("aux2", 1.0)   # sum2 applies its coeff itself
    acts = net.forward(X, outputs=["aux1", "aux2", "prob"])
    sq = 0.25 * float(np.mean(np.sum(acts["aux2"].astype(np.float64) ** 2, axis=1)))
    assert net.loss(X, Y) == pytest.approx(0.3 * xent(acts["aux1"], Y) + sq + xent(acts["prob"], Y), rel=1e-6)


def test_a_coeff_on_the_only_softmax_scales_loss_and_gradients():
    plain, half = engine.load(head_alone("prob")), engine.load(head_alone("prob").replace(
        "{name: prob, type: softmax}", "{name: prob, type: softmax, coeff: 0.5}"))
    (l1, g1), (l2, g2) = plain.gradients(X, Y), half.gradients(X, Y)
    assert l2 == pytest.approx(0.5 * l1, rel=1e-6)
    for k in g1:
        helpers.close(g2[k], 0.5 * g1[k])


def test_split_batches_and_columns_give_the_same_loss_and_gradients():
    x = np.random.default_rng(5).standard_normal((10, 3, 10, 10)).astype(np.float32)
    y = np.arange(10) % 5
    results = []
    for mode in ("layers", "batch"):
        net = engine.load(AUX, threading=mode)
        results.append(net.gradients(x, y))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for k in results[0][1]:
        helpers.close(results[1][1][k], results[0][1][k])


def test_set_override_of_a_heads_coeff():
    net = engine.load(AUX, overrides={"aux1.coeff": 0.5})
    assert [w for _, w in net.cost_heads] == [0.5, 0.3, 1.0]


@pytest.mark.parametrize("head, words, line", [
    ("- {name: aux1, type: softmax, coeff: 0}", "must be > 0", 7),
    ("- {name: aux1, type: softmax, coeff: -1}", "must be > 0", 7),
    ("- {name: aux1, type: softmax, coeff: x}", "must be a number", 7),
    ("- {name: aux1, type: neuron, fn: relu}", "unused", 7),
    ("- {name: aux1, type: softmax, coeff: 0.3}\n  - {name: after, type: neuron, fn: relu, inputs: aux1}",
     "cost layer and must be the net's output or an auxiliary head", 7),
])
def test_bad_heads_are_config_errors(head, words, line):
    text = AUX.replace("- {name: aux1, type: softmax, coeff: 0.3}", head)
    with pytest.raises(engine.ConfigError) as e:
        engine.load(text)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert (e.value.layer, e.value.line) == ("aux1", line)


def test_an_auxiliary_cost_needs_a_cost_as_the_output():
    text = AUX.replace("- {name: prob, type: softmax}", "- {name: prob, type: neuron, fn: relu}")
    with pytest.raises(engine.ConfigError, match="auxiliary head only when the net's output .'prob'") as e:
        engine.load(text)
    assert e.value.layer == "aux1" and e.value.line == 7


def test_coeff_is_no_key_of_other_layers():
    with pytest.raises(engine.ConfigError, match="unknown key for a fc layer"):
        engine.load(AUX.replace("outputs: 5, inputs: conv2,", "outputs: 5, coeff: 2, inputs: conv2,"))


def test_summary_and_draw_show_every_head():
    net = engine.load(AUX)
    assert "loss: prob + 0.3 x aux1 + 0.3 x aux2 (output: prob)" in net.summary()
    assert "loss:" not in engine.load(head_alone("prob")).summary()
    lay = draw.layout(draw.structure(AUX))
    assert {"aux1", "aux2", "prob"} <= set(lay.boxes)
    assert "coeff=0.3" in " ".join(lay.boxes["aux1"].lines) and "coeff" not in " ".join(lay.boxes["prob"].lines)


def test_validation_reports_the_total_loss_and_the_outputs_errors():
    from engine.datasets import open_source
    from engine.datasets.augment import Preprocess
    net = engine.load(AUX)
    source = open_source("synthetic:40", net.input_shape, num_classes=5)
    pre = Preprocess(net.input_shape, np.zeros(net.input_shape, np.float32))
    got = evaluate(net, source, pre, batch=16)
    loss, e1, n = 0.0, 0, 0
    for raw, labels in source.batches("val", 16):
        x = pre.test(raw)
        acts = net.forward(x, outputs=["aux1", "aux2", "prob"])
        loss += (0.3 * xent(acts["aux1"], labels) + 0.3 * xent(acts["aux2"], labels)
                 + xent(acts["prob"], labels)) * len(labels)
        e1 += int(np.sum(acts["prob"].argmax(1) != labels))
        n += len(labels)
    assert got["loss"] == pytest.approx(loss / n, rel=1e-6) and got["top1"] == e1 / n


def test_training_from_the_cli_then_test_and_predict_use_the_output(tmp_path, capsys):
    net_file = tmp_path / "aux.yaml"
    net_file.write_text(AUX)
    run = tmp_path / "run"
    rc, out, err = helpers.cli(capsys, "train", net_file, "--data", "synthetic:48", "--epochs", "2",
                               "--batch", "16", "--out", run)
    assert rc == 0, err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) for m in metrics)
    net = engine.load(str(run))
    assert net.output_layer.name == "prob" and len(net.cost_heads) == 3
    raw = np.random.default_rng(1).integers(0, 255, (2, 10, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(net.predict(raw), net.forward(net.prepare(raw), outputs=["prob"])["prob"])
    rc, out, err = helpers.cli(capsys, "test", "--checkpoint", run, "--data", "synthetic:48")
    assert rc == 0, err
    assert "top-1" in out + err


def test_cuda_heads_match_the_cpu():
    from cudamode import cuda_mode
    if cuda_mode() is None:
        pytest.skip("no CUDA: run with NUMBA_ENABLE_CUDASIM=1 (the simulator) or on a GPU")
    cpu, gpu = engine.load(AUX, seed=1), engine.load(AUX, seed=1, device="cuda")
    (l1, g1), (l2, g2) = cpu.gradients(X, Y), gpu.gradients(X, Y)
    assert l2 == pytest.approx(l1, rel=1e-5) and gpu.loss(X, Y) == pytest.approx(l1, rel=1e-5)
    for k in g1:
        helpers.close(g2[k], g1[k])
