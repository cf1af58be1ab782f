"""`python -m engine time`: a row per layer with numbers, the totals, one-line errors with
exit status 2, and a structured result from engine.tools.timing.measure."""
import os
import re
import subprocess
import sys

import pytest

import engine
from engine.cli import main
from engine.tools import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# two columns joined by an fc, dropout, a pool and a norm: every join path of the timing loop
SMALL = """\
name: small
input: {shape: [2, 10, 10]}
layers:
  - {name: conv1a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: pool1a, type: pool, gpu: 0, mode: max, size: 2}
  - {name: conv1b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: norm1b, type: cmrnorm, gpu: 1, size: 3}
  - {name: pool1b, type: pool, gpu: 1, mode: avg, size: 2}
  - {name: fc2, type: fc, inputs: [pool1a, pool1b], outputs: 16, neuron: relu, init_w: 0.1}
  - {name: drop2, type: dropout, rate: 0.5}
  - {name: fc3, type: fc, outputs: 5, init_w: 0.1}
  - {name: prob, type: softmax}
"""
LAYERS = ["conv1a", "pool1a", "conv1b", "norm1b", "pool1b", "fc2", "drop2", "fc3", "prob"]
GPUS = [0, 0, 1, 1, 1, 0, 0, 0, 0]
NUMBER = r"\d+\.\d+"


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return str(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_time_verb_prints_a_row_per_layer_and_the_totals(small):
    p = run_cli("time", small, "--batch", "4", "--iterations", "2")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    kinds = ["conv", "pool", "conv", "cmrnorm", "pool", "fc", "dropout", "fc", "softmax"]
    for name, kind, gpu in zip(LAYERS, kinds, GPUS):
        assert re.search(rf"^{name}\s+{kind}\s+{gpu}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M), (name, out)
    assert re.search(rf"^layers total\s+{NUMBER}\s+{NUMBER}", out, re.M), out
    assert re.search(rf"SGD update {NUMBER} ms", out), out
    m = re.search(rf"whole step \(forward \+ backward \+ update\): ({NUMBER}) ms per batch.*?"
                  rf"([\d,]+\.\d) images/s\s+([\d,]+\.\d+) GFLOP/s", out)
    assert m, out
    assert float(m.group(1)) > 0 and float(m.group(2).replace(",", "")) > 0
    assert "batch 4, 2 timed iterations after 2 warm-up" in out


def test_no_train_times_the_forward_pass_only(small, capsys):
    assert main(["time", small, "--batch", "3", "--iterations", "1", "--no-train"]) == 0
    out = capsys.readouterr().out
    assert "inference (forward)" in out and "whole step (forward):" in out
    assert re.search(rf"^conv1a\s+conv\s+0\s+{NUMBER}\s+-\s+{NUMBER}$", out, re.M), out
    assert "SGD update" not in out


def test_bad_net_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}\n  - {name: pool1a",
                                 "filters: 0, size: 3, padding: 1, neuron: relu, init_w: 0.1}\n  - {name: pool1a"))
    p = run_cli("time", str(bad))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "bad.yaml:4" in lines[0] and "conv1a" in lines[0] and "filters" in lines[0]
    assert p.stdout == ""


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_bad_batch_exits_2_with_a_clear_message(small, capsys, batch):
    assert main(["time", small, "--batch", batch]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --batch must be a whole number >= 1, got {batch}"


def test_a_net_without_a_cost_layer_needs_no_train(tmp_path, capsys):
    path = tmp_path / "nocost.yaml"
    path.write_text("name: nocost\ninput: {shape: [1, 6, 6]}\nlayers:\n"
                    "  - {name: fc1, type: fc, outputs: 3}\n")
    assert main(["time", str(path), "--batch", "2", "--iterations", "1"]) == 2
    assert "--no-train" in capsys.readouterr().err
    assert main(["time", str(path), "--batch", "2", "--iterations", "1", "--no-train"]) == 0


def test_measure_returns_a_structured_result(small):
    net = engine.load(small)
    r = timing.measure(net, batch=3, iterations=2, warmup=1)
    assert [t.name for t in r.layers] == LAYERS
    assert [t.gpu for t in r.layers] == GPUS
    assert all(t.forward_ms >= 0 and t.backward_ms >= 0 for t in r.layers)
    assert r.layers[0].forward_ms > 0 and r.layers[0].backward_ms > 0
    assert r.step_ms > 0 and r.step_ms_min <= r.step_ms <= r.step_ms_max
    assert r.update_ms >= 0 and r.cost_ms >= 0 and r.overhead_us >= 0
    macs = sum(int(n.layer.macs()) for n in net.layers)
    assert r.macs_per_image == macs and r.flops_per_batch == 2 * 3 * macs * 3
    assert r.images_per_s == pytest.approx(3 / (r.step_ms / 1e3))
    d = r.to_dict()
    assert d["layers"][0]["name"] == "conv1a" and d["batch"] == 3 and d["train"] is True
    with pytest.raises(ValueError, match="batch"):
        timing.measure(net, batch=0)


def test_clock_subtracts_its_own_overhead():
    clock = timing.Clock(samples=100)
    assert clock.overhead >= 0
    import time
    assert clock.since(time.perf_counter()) >= 0.0       # an empty region: ~0, never negative
