"""Real signals to real training processes: SIGTERM and Ctrl-C save and stop, a second Ctrl-C
aborts without damage, and SIGKILL at random moments (during batches and during checkpoint
writes) followed by --resume ends with exactly the weights of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fc1's 1.2M weights make each checkpoint ~10 MB, so a kill can land inside a write
NET = """\
name: killme
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: pool1, type: pool, mode: max, size: 2}
  - {name: fc1, type: fc, outputs: 4096, neuron: relu, init_w: 0.01}
  - {name: drop1, type: dropout, rate: 0.5}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.01}
  - {name: prob, type: softmax}
train: {data: "synthetic:1024", epochs: 20, batch: 32, lr: 0.01}
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "killme.yaml"
    path.write_text(NET)
    return str(path)


def start(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, text, timeout=120):
    """Read the child's stdout until a line containing `text`; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"never printed {text!r}: {lines} {proc.stderr.read()}")


def final_params(run_dir):
    arrays, meta = checkpoint.load(str(run_dir))
    return {k: v for k, v in arrays.items() if k.startswith("param/")}, meta


def assert_same_run(a, b):
    pa, ma = final_params(a)
    pb, mb = final_params(b)
    assert ma["epoch"] == mb["epoch"] and ma["batch"] == mb["batch"] == 0
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), f"{k} differs from the uninterrupted run"
    assert [m["train_loss"] for m in ma["metrics"]] == [m["train_loss"] for m in mb["metrics"]]
    assert [m["val_top1"] for m in ma["metrics"]] == [m["val_top1"] for m in mb["metrics"]]


def no_damage(run_dir):
    names = os.listdir(run_dir)
    assert not [n for n in names if n.startswith(checkpoint.TMP_PREFIX)], names
    for path in checkpoint.list_checkpoints(str(run_dir)):
        checkpoint.verify(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    path = out.parent / "killme.yaml"
    path.write_text(NET)
    r = subprocess.run([sys.executable, "-m", "engine", "train", str(path), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow       # real training processes, and an uninterrupted reference run
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_mid_epoch_and_resume_matches(tmp_path, net, reference, sig, code):
    run = tmp_path / "run"
    proc = start(net, "--out", str(run))
    wait_for_line(proc, "epoch   2 ")
    time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert f"stopped by {signal.Signals(sig).name}" in out and "--resume" in out
    assert "Traceback" not in err
    no_damage(run)
    saved = checkpoint.list_checkpoints(str(run))[-1]
    assert checkpoint.verify(saved)["epoch"] >= 2
    r = subprocess.run([sys.executable, "-m", "engine", "train", "--resume", str(run)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {saved}" in r.stdout
    assert_same_run(run, reference)


def test_a_second_ctrl_c_aborts_at_once_without_damage(tmp_path, net):
    run = tmp_path / "run"
    proc = start(net, "--out", str(run))
    wait_for_line(proc, "epoch   1 ")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    no_damage(run)
    assert checkpoint.verify(checkpoint.list_checkpoints(str(run))[-1])["epoch"] >= 1


@pytest.mark.slow
def test_sigkill_at_ten_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, net, reference):
    run = tmp_path / "run"
    rng = np.random.default_rng(2026)
    in_write = resumed = 0

    def launch():
        """What a user does after a crash: resume if there is a checkpoint, else start again."""
        try:
            checkpoint.resolve(str(run))
        except checkpoint.CheckpointError:
            return start(net, "--out", str(run)), False
        return start("--resume", str(run)), True

    for kill in range(10):
        proc, was_resumed = launch()
        resumed += was_resumed
        wait_for_line(proc, "training killme")
        if kill % 2:
            # during a checkpoint write: kill as soon as a temporary file appears
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if any(n.startswith(checkpoint.TMP_PREFIX) for n in os.listdir(run)):
                    break
                time.sleep(0.0005)
        else:
            # at a random moment once an epoch has ended (during batches, validation or a
            # save), so that the next launch has a checkpoint to resume however slow the
            # machine (a loaded CI machine can take seconds per epoch)
            wait_for_line(proc, "epoch ")
            time.sleep(rng.uniform(0.0, 1.2))
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        in_write += any(n.startswith(checkpoint.TMP_PREFIX) for n in os.listdir(run))
        for path in checkpoint.list_checkpoints(str(run)):   # whatever is listed is whole
            checkpoint.verify(path)
    assert in_write >= 1, "no kill landed inside a checkpoint write"
    assert resumed >= 3, "too few kills came after a checkpoint to test resuming"
    proc, _ = launch()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    no_damage(run)
    assert_same_run(run, reference)
