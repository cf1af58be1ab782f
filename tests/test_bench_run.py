"""bench/torch_mirror.py computes what our nets compute; bench/run.py's children print valid
JSON with the fields its table needs, and the parent runs engine-only without torch."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import example_net

import engine
import layers

try:
    import torch
except ImportError:       # the torch-free tests still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install -e '.[torch]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RUN = os.path.join(ROOT, "bench", "run.py")
NETS = sorted(glob.glob(os.path.join(ROOT, "nets", "*.yaml")))
SMALL_NETS = ("lenet5", "cifar10-18pct", "cifar10-80sec", "alexnet-digits")
FAST_MIRRORS = ("lenet5", "cifar10-80sec", "alexnet-digits")    # the rest only with --full

def batch_for(net, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + net.input_shape, dtype=np.float32)
    return x, rng.integers(0, net.num_classes, n)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-30))


def run_worker(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, RUN, "--worker", *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


STEP_FIELDS = {"framework", "net", "batch", "mode", "threads", "warmup_s", "step_s", "steps",
               "images_per_s", "peak_rss_mib", "ru_maxrss_mib", "version"}


def test_engine_worker_prints_one_json_line():
    r = run_worker("engine", "--net", "lenet5", "--batch", "8", "--mode", "train", "--warmup", "1",
                   "--min-steps", "2", "--max-steps", "2", "--budget", "0", "--threads", "1")
    assert STEP_FIELDS <= set(r), r
    assert r["framework"] == "engine" and r["mode"] == "train" and r["batch"] == 8 and r["threads"] == 1
    assert r["steps"] == 2 == len(r["step_s"]) and all(t > 0 for t in r["step_s"])
    assert r["images_per_s"] == pytest.approx(8 / np.median(r["step_s"]))
    assert r["peak_rss_mib"] > 10


def test_server_warms_up_once_and_measures_each_block_asked_for(monkeypatch):
    import bench.run as run
    monkeypatch.setenv("PYTHONPATH", ROOT)
    server = run.Server(["engine", "--net", "lenet5", "--batch", "8", "--mode", "infer", "--warmup", "1",
                         "--min-steps", "2", "--max-steps", "2", "--budget", "0"], threads=1, timeout=300)
    try:
        first, second = server.block(), server.block()
    finally:
        server.close()
    assert server.proc.returncode == 0 and server.error is None
    for r in (first, second):
        assert STEP_FIELDS <= set(r), r
        assert r["steps"] == 2 == len(r["step_s"]) and r["peak_rss_mib"] > 10
    assert first["warmup_s"] == second["warmup_s"]              # one warm-up, then blocks
    assert first["step_s"] != second["step_s"]                   # each block measured anew


def test_server_that_fails_says_why():
    import bench.run as run
    server = run.Server(["engine", "--net", "no-such-net", "--batch", "8", "--mode", "infer"], threads=1,
                        timeout=300)
    r = server.block()
    assert r["error"].startswith("exit 1: ") and "no-such-net" in r["error"], r
    assert server.block() == r                                   # not asked again
    server.close()


@needs_torch
@pytest.mark.slow        # PyTorch started in two children
def test_parent_alternates_warm_engine_and_torch_measurements(capsys):
    import bench.run as run
    assert run.main(["--nets", "lenet5", "--modes", "infer", "--rounds", "3", "--budget", "0",
                     "--min-steps", "1", "--warmup", "1", "--size", "64", "--reps", "1", "--threads", "1",
                     "--pause", "0"]) == 0
    rounds = [ln.split(":")[1].split()[-1] for ln in capsys.readouterr().out.splitlines()
              if ln.startswith("  round ")]
    assert rounds == ["engine", "torch", "torch", "engine", "engine", "torch"], rounds


@needs_torch
@pytest.mark.slow        # PyTorch started in two children
def test_torch_worker_and_peak_worker(tmp_path):
    from bench.run import describe_net
    info = describe_net(os.path.join(ROOT, "nets", "lenet5.yaml"))
    path = tmp_path / "lenet5.json"
    path.write_text(json.dumps(info))
    assert info["classes"] == 10 and info["input_shape"] == [1, 28, 28]
    for mode in ("train", "infer"):
        r = run_worker("torch", "--net", "lenet5", "--batch", "8", "--mode", mode, "--warmup", "1",
                       "--min-steps", "2", "--max-steps", "3", "--budget", "0", "--threads", "1",
                       "--description", str(path))
        assert STEP_FIELDS <= set(r) and r["framework"] == "torch" and r["mode"] == mode
        assert r["steps"] == 2 and r["images_per_s"] > 0
    peak = run_worker("peak", "--size", "128", "--reps", "1", "--threads", "1")
    assert peak["numpy_gflops"] > 0 and peak["torch_gflops"] > 0 and peak["size"] == 128


def test_parent_without_torch_prints_engine_figures_and_json(tmp_path, monkeypatch, capsys):
    import bench.run as run
    monkeypatch.setattr(run, "have_torch", lambda: (False, "No module named 'torch'"))
    out_json = tmp_path / "r.json"
    assert run.main(["--nets", "lenet5", "--modes", "infer", "--rounds", "1", "--budget", "0",
                     "--min-steps", "1", "--warmup", "1", "--size", "64", "--reps", "1", "--threads", "1",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not importable (No module named 'torch'): engine figures only" in out
    row = [ln for ln in out.splitlines() if ln.startswith("lenet5")]
    assert len(row) == 1 and " infer " in row[0], out
    doc = json.loads(out_json.read_text())
    assert doc["torch"] is False and doc["rows"][0]["torch"] is None
    e = doc["rows"][0]["engine"]
    assert e["steps"] == 1 and e["min"] <= e["median"] <= e["max"] and e["peak_rss_mib"] > 0
    assert doc["peak"]["numpy_gflops"] > 0



def test_latency_runs_batch_1_inference_and_prints_milliseconds(monkeypatch, capsys):
    import bench.run as run
    monkeypatch.setattr(run, "have_torch", lambda: (False, "No module named 'torch'"))
    assert run.main(["--latency", "--nets", "lenet5", "--rounds", "1", "--budget", "0", "--min-steps", "2",
                     "--warmup", "1", "--size", "64", "--reps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "lenet5 b1 infer engine:" in out and " train " not in out
    head = next(ln for ln in out.splitlines() if ln.startswith("net") and "engine ms" in ln)
    assert head.split() == ["net", "batch", "engine", "ms", "torch", "ms", "torch/engine"]
    row = next(ln for ln in out.splitlines() if ln.startswith("lenet5") and " - " in ln + " ")
    assert row.split()[1] == "1" and float(row.split()[2]) > 0


def test_latency_table_turns_rates_into_milliseconds():
    import bench.run as run
    rows = [{"net": "alexnet", "batch": 1, "engine": {"median": 40.0, "min": 20.0, "max": 50.0},
             "torch": {"median": 25.0, "min": 10.0, "max": 30.0}}]
    line = run.latency_table(rows).splitlines()[3]
    # 1000 / 40 = 25 ms (fastest 1000/50 = 20, slowest 1000/20 = 50); torch 40 ms; 40 / 25 = 1.60
    assert line.split() == ["alexnet", "1", "25.0", "(20.0-50.0)", "40.0", "(33.3-100.0)", "1.60"]


def test_summary_line_gives_each_modes_geometric_mean_range_and_best_share_of_peak():
    import bench.run as run

    def row(net, mode, engine, torch, flop=1e9):
        rate = (lambda v: None if v is None else {"median": v, "min": v, "max": v})
        return {"net": net, "batch": 8, "mode": mode, "flop_per_image": flop, "engine": rate(engine),
                "torch": rate(torch)}
    rows = [row("a", "train", 2.0, 1.0), row("b", "train", 1.0, 2.0), row("c", "train", 4.0, None),
            row("a", "infer", 30.0, 10.0)]
    # train: ratios 2 and 0.5, geometric mean 1.00; best GFLOP/s 4 of a 10 GFLOP/s peak: 40%
    assert run.summary_line(rows, 10.0) == (
        "summary: train 1.00x PyTorch (geometric mean of 2; 0.50x b b8 .. 2.00x a b8), best 40% of peak; "
        "infer 3.00x PyTorch (geometric mean of 1; 3.00x a b8 .. 3.00x a b8), best 300% of peak")
    assert run.summary_line([row("a", "train", 2.0, None)], 10.0) is None

# ---- the mirror -------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("path", [p if os.path.basename(p)[:-5] in FAST_MIRRORS else pytest.param(p, marks=pytest.mark.slow)
                                  for p in NETS], ids=lambda p: os.path.basename(p)[:-5])
def test_mirror_computes_what_the_net_computes(path):
    from bench.torch_mirror import mirror
    net = engine.load(path)
    small = net.name in SMALL_NETS
    x, labels = batch_for(net, 4 if small else 2)
    model = mirror(net).eval()
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(model(tx).detach().numpy(), net.forward(x), rtol=1e-4, atol=1e-6)
    loss, grads = net.gradients(x, labels, train=False)
    tloss = model.loss(tx, torch.from_numpy(labels))
    assert tloss.item() == pytest.approx(loss, rel=1e-5)
    tloss.backward()
    tgrads = {f"{n}.{p}": t.grad.numpy() for n, part in zip(model.names, model.parts)
              for p, t in part.named_parameters()}
    assert set(tgrads) == set(grads)
    # deep nets at their tiny init hold near-ties in max pooling, which float32 rounding
    # settles one way or the other: there the last layer's gradients are compared
    keys = list(grads) if small else [k for k in grads if k.startswith(net.layers[-2].name + ".")]
    for k in keys:
        assert rel(tgrads[k], grads[k]) < 1e-3, k


@needs_torch
def test_mirror_covers_every_layer_type():
    from bench.torch_mirror import FORWARD, NOT_MIRRORED
    missing = set(layers.REGISTRY) - set(FORWARD) - set(NOT_MIRRORED)
    assert not missing, (f"bench/torch_mirror.py has no PyTorch version of {sorted(missing)}: add one "
                         "to its FORWARD (or the type and why to NOT_MIRRORED)")


@needs_torch
def test_mirror_of_every_layer_type_example():
    from bench.torch_mirror import NOT_MIRRORED, describe, mirror
    net = engine.load(example_net("softmax", skip=NOT_MIRRORED))
    json.dumps(describe(net.layers))                      # what bench/run.py sends to its children
    x, labels = batch_for(net, 3, seed=1)
    model = mirror(net).eval()
    tx = torch.from_numpy(x).requires_grad_(True)
    np.testing.assert_allclose(model(tx).detach().numpy(), net.forward(x), rtol=1e-4, atol=1e-6)
    loss, grads = net.gradients(x, labels, train=False)
    model.loss(tx, torch.from_numpy(labels)).backward()
    for name, part in zip(model.names, model.parts):
        for p, t in part.named_parameters():
            assert rel(t.grad.numpy(), grads[f"{name}.{p}"]) < 1e-3, f"{name}.{p}"


@needs_torch
def test_mirror_training_step_and_sum2_cost():
    from bench.torch_mirror import mirror
    net = engine.load("name: sq\ninput: {shape: [2, 4, 4]}\nlayers:\n"
                      "  - {name: c, type: conv, filters: 3, size: 3, init_w: 0.5, init_b: 0.2}\n"
                      "  - {name: cost, type: sum2, coeff: 0.5}\n")
    x, _ = batch_for(net, 3)
    model = mirror(net)
    loss, grads = net.gradients(x, None)
    tloss = model.loss(torch.from_numpy(x))
    assert tloss.item() == pytest.approx(loss, rel=1e-5)
    tloss.backward()
    assert rel(model.parts[0].weight.grad.numpy(), grads["c.weight"]) < 1e-4
    opt = torch.optim.SGD(model.parameter_groups(5e-4), lr=0.1, momentum=0.9)
    opt.step()
    assert model.loss(torch.from_numpy(x)).item() < tloss.item()


@needs_torch
def test_unsupported_layer_names_layer_and_type():
    from bench.torch_mirror import UnsupportedLayer, mirror
    net = engine.load("name: loc\ninput: {shape: [1, 6, 6]}\nlayers:\n"
                      "  - {name: loc1, type: local, filters: 2, size: 3}\n"
                      "  - {name: prob, type: softmax}\n")
    with pytest.raises(UnsupportedLayer, match="layer 'loc1' of type 'local'"):
        mirror(net)
