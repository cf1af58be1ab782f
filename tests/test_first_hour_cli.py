"""A new user's first hour (issue 13): what the CLI says while and after training, `check` of
the `train:` section, --keep, --resume of a finished run, --device wording, `show`'s folder."""
import io
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from engine import checkpoint
from engine.cli import cli_device_words, main
from engine.train import Progress, Trainer
from helpers import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """name: tiny
input: {shape: [1, 8, 8]}
layers:
  - {name: fc1, type: fc, outputs: 10}
  - {name: prob, type: softmax}
train:
  data: "synthetic:256"
  epochs: 2
  batch: 64
  lr: 0.01
"""


def quiet(*_):
    pass


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def cuda_usable():
    try:
        from engine.cuda_backend import available
    except ImportError:
        return False
    return available()


# ---- 2: `check` validates the train: section as `train` does -----------------------------
@pytest.mark.parametrize("good, bad, key, words", [
    ("  epochs: 2\n", "  epoch: 20\n", "epoch", "did you mean 'epochs'"),
    ("  lr: 0.01\n", "  lr: -1\n", "lr", "must be > 0"),
    ("  lr: 0.01\n", "  lr: 0.01\n  schedule: {type: stepp}\n", "type", "must be one of"),
], ids=["misspelt-key", "bad-value", "bad-schedule"])
def test_check_rejects_what_train_rejects_with_the_same_message(tmp_path, capsys, good, bad, key, words):
    path = tmp_path / "net.yaml"
    path.write_text(TINY.replace(good, bad))
    rc, out, check_err = cli(capsys, "check", str(path))
    assert rc == 2 and "OK" not in out
    assert f"key '{key}'" in check_err and words in check_err and str(path) in check_err
    if key == "epoch":
        assert check_err.startswith(f"error: {path}:8: key 'epoch'")     # the line of the misspelt key
    rc, _, train_err = cli(capsys, "train", str(path), "--out", str(tmp_path / "run"))
    assert rc == 2 and train_err == check_err
    assert not (tmp_path / "run").exists()


def test_check_still_says_ok_for_a_good_file(tiny, capsys):
    rc, out, err = cli(capsys, "check", tiny)
    assert rc == 0 and out.strip() == f"{tiny}: OK (2 layers, 650 parameters)", err


# ---- 3: progress that tells the truth ----------------------------------------------------
@pytest.mark.slow        # compiles the tiny net's kernels into a fresh cache (CI runs it)
def test_piped_training_shows_the_compile_phase_on_stderr_only_when_it_compiles(tiny, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), ENGINE_COMPILE_AHEAD="0")   # a cold cache

    def train(run):
        proc = subprocess.run([sys.executable, "-m", "engine", "train", tiny, "--out", str(tmp_path / run)],
                              capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "\r" not in proc.stderr                 # no bar redrawn into a file
        return proc.stderr.splitlines()
    lines = train("cold")
    assert lines[0] == "compiling kernels (first run only)..."
    assert re.fullmatch(r"first step done in \d+\.\ds", lines[1]), lines
    lines = train("warm")                              # every kernel from the cache: nothing compiles
    assert re.fullmatch(r"first step done in \d+\.\ds", lines[0]), lines
    assert not any("compiling" in ln for ln in lines), lines


class CompilingProgress(Progress):
    """Progress whose first step starts with a kernel compile, as a run from a cold cache (this
    test process has the kernels loaded already, and loading is not compiling)."""

    def epoch(self, *args):
        first = self.first_step is None
        super().epoch(*args)
        if first:
            from layers import threads
            threads.COMPILING.on_start(None)
            threads.COMPILING.on_end(None)


def test_plain_progress_lines_when_not_a_terminal(tiny, tmp_path):
    stream = io.StringIO()
    trainer = Trainer(tiny, batch=16, out=str(tmp_path / "run"), log=quiet)
    trainer.progress = CompilingProgress(stream, interval=0)
    trainer.run()
    lines = stream.getvalue().splitlines()
    assert lines[:1] == ["compiling kernels (first run only)..."]
    assert re.fullmatch(r"first step done in \d+\.\ds", lines[1]), lines
    steady = [ln for ln in lines if ln.startswith("epoch ")]
    # 16 steps per epoch; the first is the compiling one and gets no line of its own
    assert len(steady) == 15 + 16, lines
    m = re.fullmatch(r"epoch 2/2  (\d+)/256 images \((\d+)%\)  loss \d\.\d{4}  (\d+) img/s  ETA \d+s",
                     steady[-1])
    assert m and m.group(1) == "256" and m.group(2) == "100" and int(m.group(3)) > 0, steady[-1]


def test_an_epochs_rate_leaves_out_the_first_step_and_any_later_compiling(monkeypatch):
    # a kernel first called at a later step (the identity's loops once a bias is non-zero)
    # compiles there: seconds of the compiler that an epoch's img/s must not count
    from types import SimpleNamespace

    from layers import threads
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(threads, "COMPILING", SimpleNamespace(seconds=lambda: clock.now, add_hook=lambda h: None,
                                                              remove_hook=lambda h: None))
    p = Progress(io.StringIO(), interval=1e9, live=False)
    p.epoch(1, 2, 0, 100)
    clock.now = 5.0                   # the first step compiles for 5 s
    p.step(10, 1.0)
    clock.now = 6.5                   # step 2 compiles for 1.5 s more
    p.step(20, 1.0)
    p.close()
    first_s, first_n = p.first_step
    assert first_n == 10 and p.excluded(0) == (pytest.approx(first_s + 1.5), 10)
    p.epoch(2, 2, 0, 100)
    p.step(10, 1.0)
    assert p.excluded(1) == (0.0, 0)
    clock.now = 7.0
    assert p.excluded(1) == (pytest.approx(0.5), 0)


def test_progress_bar_on_a_terminal_counts_after_the_first_step(tiny, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    trainer = Trainer(tiny, batch=16, out=str(tmp_path / "run"), log=quiet)
    trainer.progress = CompilingProgress(stream, redraw=0)
    trainer.run()
    text = stream.getvalue()
    head, _, rest = text.partition("\n")
    assert re.fullmatch(r"compiling kernels \(first run only\)\.\.\. done in \d+\.\ds", head), head
    # tqdm's frames: images done, img/s, loss; the first frame starts after the first step's images
    assert "epoch 1/2:" in rest and "epoch 2/2:" in rest and "img/s" in rest and "loss " in rest
    assert re.search(r"epoch 1/2: +\d+%\S* +\| 16/256 ", rest), rest[:300]
    assert "compiling" not in rest


# ---- 5: --keep -------------------------------------------------------------------------------
def _fake_checkpoints(run, tags):
    run.mkdir()
    for tag in tags:
        (run / f"{tag}.npz").write_bytes(b"x")
        (run / f"{tag}.json").write_text("{}")


def test_prune_keeps_the_last_n_the_best_and_the_newest(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoints(run, ["1", "2", "3", "3-7", "4", "5", "6", "7"])
    deleted = checkpoint.prune(str(run), str(run / "6.json"), keep=2, best_epoch=2)
    # 7 is after the checkpoint just written (another attempt's): left alone
    assert sorted(os.path.basename(p) for p in deleted) == ["1.json", "3-7.json", "3.json", "4.json"]
    assert sorted(os.listdir(run)) == sorted(f"{t}.{e}" for t in ("2", "5", "6", "7") for e in ("json", "npz"))
    assert checkpoint.prune(str(run), str(run / "6.json"), keep=None) == []


def test_cli_keep_keeps_last_n_and_best(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", tiny, "--epochs", "5", "--keep", "2", "--out", str(run))
    assert rc == 0, err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(metrics, key=lambda m: m["val_top1"])["epoch"]
    expected = {4, 5, best}
    assert sorted(p for p in os.listdir(run) if p.endswith(".json")) == sorted(f"{e}.json" for e in expected)
    assert all((run / f"{e}.npz").exists() for e in expected)
    assert "keeping the last 2 epoch checkpoints and the best" in out
    assert main(["test", tiny, "--checkpoint", str(run / f"{best}.json")]) == 0


def test_keep_in_the_train_section_and_no_deletion_before_a_whole_save(tiny, tmp_path, monkeypatch):
    with open(tiny, "a") as f:
        f.write("  keep: 1\n")
    real_save, calls = checkpoint.save, []

    def failing_save(run_dir, tag, arrays, meta):
        calls.append(tag)
        if len(calls) == 3:
            raise checkpoint.CheckpointWriteError("cannot write checkpoint: No space left on device")
        return real_save(run_dir, tag, arrays, meta)
    monkeypatch.setattr(checkpoint, "save", failing_save)
    trainer = Trainer(tiny, epochs=4, out=str(tmp_path / "run"), log=quiet)
    assert trainer.settings["keep"] == 1
    with pytest.raises(checkpoint.CheckpointWriteError):
        trainer.run()
    names = sorted(os.listdir(tmp_path / "run"))
    # epoch 1 went once epoch 2 was saved whole (best or not: keep 1 plus the best); epoch 2 stays
    assert "2.json" in names and "2.npz" in names and "3.json" not in names
    assert len([n for n in names if n.endswith(".json")]) in (1, 2)


def test_keep_must_be_positive(tiny, capsys):
    rc, _, err = cli(capsys, "train", tiny, "--keep", "0")
    assert rc == 2 and "--keep" in err and ">= 1" in err


# ---- 6, 7, 13: the epoch lines, the summary, plurals, show's folder ----------------------------
def test_summary_names_the_best_epoch_and_commands_that_work(tiny, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", tiny, "--epochs", "1", "--out", str(run))
    assert rc == 0, err
    lines = out.splitlines()
    assert ", 1 epoch, batch 64" in lines[0] and "1 epochs" not in out
    epoch_line = next(ln for ln in lines if ln.startswith("epoch "))
    assert re.search(r"top-1 error +\d+\.\d\d%  top-5 error +\d+\.\d\d%", epoch_line), epoch_line
    assert re.fullmatch(r"finished 1 epoch in \d+\.\ds", lines[lines.index(epoch_line) + 1])
    best = next(ln for ln in lines if ln.startswith("best epoch 1: "))
    assert "val loss" in best and "top-1 error" in best and str(run / "1.json") in best
    assert f"run folder: {run}" in lines
    commands = [ln.strip() for ln in lines[lines.index("try next:") + 1:]]
    assert commands == [f"python -m engine test {tiny} --checkpoint {run}",
                        f"python -m engine predict {run} IMAGE.png",
                        f"python -m engine show {run} --cost"]

    # the commands run as printed (IMAGE.png made real); show writes into the run folder
    from PIL import Image
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("IMAGE.png")
    for command in commands:
        rc, out, err = cli(capsys, *shlex.split(command)[3:])
        assert rc == 0, (command, err)
    assert out.strip() == f"wrote {run / 'tiny-cost.png'}"
    assert (run / "tiny-cost.png").exists() and os.listdir(elsewhere) == ["IMAGE.png"]


def test_test_verb_labels_errors_and_needs_no_net_file(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny, epochs=1, out=str(run), log=quiet).run()
    rc, out, err = cli(capsys, "test", "--checkpoint", str(run))
    assert rc == 0, err
    assert re.search(r"loss \d\.\d{4}  top-1 error \d+\.\d\d%  top-5 error \d+\.\d\d%$", out.strip()), out


def test_show_filters_and_an_explicit_out(tiny, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    Trainer(tiny, epochs=1, out=str(run), log=quiet).run()
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "show", str(run / "1.json"), "--filters", "fc1")
    assert rc == 0, err
    assert out.strip() == f"wrote {run / 'tiny-filters-fc1.png'}" and (run / "tiny-filters-fc1.png").exists()
    rc, out, err = cli(capsys, "show", str(run), "--cost", "-o", "here.png")
    assert rc == 0 and out.strip() == "wrote here.png" and (tmp_path / "here.png").exists()


# ---- 9: --resume of a finished run ---------------------------------------------------------
def test_resume_of_a_finished_run_says_so_and_how_to_extend(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", tiny, "--out", str(run))[0] == 0
    before = {n: os.path.getmtime(run / n) for n in os.listdir(run) if n != ".lock"}
    rc, out, err = cli(capsys, "train", "--resume", str(run))
    assert rc == 0, err
    assert f"{run} already finished its 2 epochs: nothing to do" in out
    assert f"python -m engine train --resume {run} --epochs 12 (any number above 2)" in out
    assert {n: os.path.getmtime(run / n) for n in os.listdir(run) if n != ".lock"} == before
    rc, out, err = cli(capsys, "train", "--resume", str(run), "--epochs", "3")
    assert rc == 0 and "finished 3 epochs; this session trained epoch 3 in " in out, err
    assert (run / "3.json").exists()


# ---- 10: the device, in the command line's words -----------------------------------------------
def test_device_auto_says_what_it_picked(tiny, tmp_path, capsys):
    rc, out, err = cli(capsys, "train", tiny, "--epochs", "1", "--device", "auto", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    expected = "device: cuda (" if cuda_usable() else "device: cpu (no CUDA device)"
    assert out.splitlines()[1].startswith(expected), out


@pytest.mark.skipif(cuda_usable(), reason="a CUDA device is available here")
def test_cuda_error_speaks_cli(tiny, tmp_path, capsys):
    for verb in (["train", tiny, "--out", str(tmp_path / "r")], ["time", tiny]):
        rc, out, err = cli(capsys, *verb, "--device", "cuda")
        assert rc == 2 and err.startswith("error: ") and "--device cpu" in err, err
        assert "device='cpu'" not in err and "use the CPU" not in err
    assert not (tmp_path / "r").exists()


def test_cli_device_words_for_every_message():
    from engine.errors import DeviceError
    import engine.devices as devices
    assert cli_device_words("no CUDA device is available (numba.cuda.is_available() is False); use the "
                            "CPU, or install the driver") == ("no CUDA device is available (numba.cuda."
                                                             "is_available() is False); use --device cpu, "
                                                             "or install the driver")
    if not cuda_usable():
        with pytest.raises(DeviceError) as e:
            devices.resolve("cuda")
        assert "device='cpu'" in str(e.value)                     # Python's words from Python
        assert "use --device cpu (or --device auto)" in cli_device_words(str(e.value))


# ---- 12: the CUDA simulator suite reports file by file ---------------------------------------------
def test_cuda_simulator_suite_is_one_test_per_file():
    files = sorted(f for f in os.listdir(os.path.join(ROOT, "tests", "cuda"))
                   if f.startswith("test_") and f.endswith(".py"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--full", "-p",
                           "no:cacheprovider", "tests/test_cuda_simulator.py"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert ids == [f"tests/test_cuda_simulator.py::test_cuda_suite_under_the_simulator[{f}]" for f in files]


def test_skip_reasons_show_without_flags(tmp_path):
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_a():\n    pytest.skip('needs a thing we lack')\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", ROOT, "-c", os.path.join(ROOT, "pyproject.toml"),
                           str(tmp_path / "test_skips.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "SKIPPED" in proc.stdout and "needs a thing we lack" in proc.stdout, proc.stdout
