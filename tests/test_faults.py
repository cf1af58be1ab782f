"""Faults during training never lose a user's work: damaged checkpoints are named and passed
over, failed writes keep the previous checkpoint, NaN stops with the layer's name, a run
folder is used by one training at a time, and same seed means same weights."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine import checkpoint
from engine.finite import NonFiniteError, all_finite
from engine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """\
name: tiny
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: pool1, type: pool, mode: max, size: 2}
  - {name: fc1, type: fc, outputs: 64, neuron: relu, init_w: 0.05}
  - {name: drop1, type: dropout, rate: 0.5}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
train: {data: "synthetic:128", epochs: 3, batch: 16, lr: 0.05}
"""


def quiet(*_):
    pass


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def params_of(run_dir):
    arrays, meta = checkpoint.load(str(run_dir))
    return {k: v for k, v in arrays.items() if k.startswith("param/")}, meta


# ---- checkpoints you can trust ------------------------------------------------------------
def test_sidecar_records_the_sha256_of_the_weights(tmp_path):
    path = checkpoint.save(str(tmp_path), "1", {"w": np.arange(5, dtype=np.float32)}, {"epoch": 1})
    meta = json.loads(open(path).read())
    assert meta["sha256"] == checkpoint.sha256_of(str(tmp_path / "1.npz"))
    assert len(meta["sha256"]) == 64


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty_json", "missing_npz"])
def test_a_damaged_checkpoint_is_named_and_the_folder_falls_back(tmp_path, damage):
    checkpoint.save(str(tmp_path), "1", {"w": np.ones(4096, np.float32)}, {"epoch": 1})
    checkpoint.save(str(tmp_path), "2", {"w": np.full(4096, 2, np.float32)}, {"epoch": 2})
    npz, js = tmp_path / "2.npz", tmp_path / "2.json"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF            # one bit of the weights, zip structure intact
        npz.write_bytes(bytes(data))
    elif damage == "empty_json":
        js.write_text('{"epoch": 2, "id": "ab')
    else:
        npz.unlink()
    if damage != "missing_npz":
        with pytest.raises(checkpoint.CheckpointError) as info:
            checkpoint.load(str(js))
        assert "2.npz" in str(info.value) or "2.json" in str(info.value)
    skipped = []
    arrays, meta = checkpoint.load(str(tmp_path), skipped)
    assert meta["epoch"] == 1 and np.all(arrays["w"] == 1)
    if damage != "missing_npz":                 # a lone .json is not listed at all
        assert [os.path.basename(p) for p, _ in skipped] == ["2.json"]


def test_resume_takes_the_newest_valid_checkpoint_and_says_which(tmp_path, tiny):
    run = tmp_path / "run"
    Trainer(tiny, out=str(run), log=quiet).run()
    data = bytearray((run / "3.npz").read_bytes())
    data[-200] ^= 0x01
    (run / "3.npz").write_bytes(bytes(data))
    lines = []
    trainer = Trainer(None, resume=str(run), log=lines.append)
    assert trainer.epoch == 2
    text = "\n".join(lines)
    assert "passing over a damaged checkpoint" in text and "3.npz" in text
    assert f"resuming from {run / '2.json'}" in text


def test_cli_names_a_corrupted_checkpoint_file(tmp_path, tiny):
    run = tmp_path / "run"
    Trainer(tiny, out=str(run), log=quiet, epochs=1).run()
    (run / "1.npz").write_bytes((run / "1.npz").read_bytes()[:-100])
    r = run_cli("test", tiny, "--checkpoint", str(run / "1.json"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "1.npz" in r.stderr and "SHA-256" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_checkpoint_of_another_net_is_a_clear_error(tmp_path, tiny):
    run = tmp_path / "run"
    Trainer(tiny, out=str(run), log=quiet, epochs=1).run()
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("outputs: 64", "outputs: 32"))
    with pytest.raises(checkpoint.CheckpointError, match=r"1\.json.*does not fit net.*fc1"):
        Trainer(str(other), resume=str(run), log=quiet)
    with pytest.raises(checkpoint.CheckpointError, match=r"1\.json.*does not fit"):
        engine.load(str(other), checkpoint=str(run))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_keeps_the_previous_checkpoint_and_stops(tmp_path, tiny, monkeypatch, code):
    run = tmp_path / "run"
    real_savez = np.savez
    calls = []

    def failing_savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:                      # the second epoch's checkpoint
            f.write(b"PK partial")
            raise OSError(code, os.strerror(code))
        real_savez(f, **arrays)
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        Trainer(tiny, out=str(run), log=quiet).run()
    message = str(info.value)
    assert os.strerror(code) in message and "1.json" in message and "kept" in message
    assert sorted(os.listdir(run)) == [".lock", "1.json", "1.npz", "metrics.jsonl"]
    monkeypatch.setattr(np, "savez", real_savez)
    arrays, meta = checkpoint.load(str(run))
    assert meta["epoch"] == 1
    # the run goes on from there once the disk is fixed
    assert Trainer(None, resume=str(run), log=quiet).run()["metrics"][-1]["epoch"] == 3


def test_cli_an_unusable_run_folder_is_one_line_exit_2(tmp_path, tiny):
    # a plain file where the run folder's parent should be: the folder cannot be made
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = run_cli("train", tiny, "--out", str(blocker / "run"), "--epochs", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: cannot use") and len(r.stderr.strip().splitlines()) == 1


def test_a_run_folder_in_use_is_refused(tmp_path, tiny):
    run = tmp_path / "run"
    with checkpoint.RunLock(str(run)):          # another training holds it
        with pytest.raises(checkpoint.CheckpointError, match="in use by another training"):
            Trainer(tiny, out=str(run), log=quiet).run()
        r = run_cli("train", tiny, "--out", str(run), "--epochs", "1")
        assert r.returncode == 2 and "in use by another training" in r.stderr, r.stderr
        assert str(os.getpid()) in r.stderr          # says which process holds it
    Trainer(tiny, out=str(run), log=quiet, epochs=1).run()   # released: it runs


def test_a_new_run_never_overwrites_an_old_one(tmp_path, tiny):
    run = tmp_path / "run"
    Trainer(tiny, out=str(run), log=quiet, epochs=1).run()
    before = (run / "1.npz").read_bytes()
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints.*--resume"):
        Trainer(tiny, out=str(run), log=quiet, epochs=1, seed=5).run()
    assert (run / "1.npz").read_bytes() == before


def test_temporaries_of_a_killed_save_are_cleaned_when_the_run_resumes(tmp_path, tiny):
    run = tmp_path / "run"
    Trainer(tiny, out=str(run), log=quiet, epochs=1).run()
    (run / ".tmp-abc2.npz").write_bytes(b"PK half")
    Trainer(None, resume=str(run), epochs=2, log=quiet).run()
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


# ---- non-finite values ---------------------------------------------------------------------
def test_all_finite_finds_nan_and_inf_anywhere():
    a = np.zeros(100_003, np.float32)
    assert all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 50_000, 100_002):
            b = a.copy()
            b[where] = bad
            assert not all_finite(b)
    assert all_finite(np.float32([3.4e38, -3.4e38, 1e-45]))


def poison(trainer, layer_name, method, after_calls):
    """Make `method` of a layer return NaN from its `after_calls`-th training call on."""
    layer = trainer.net.layer(layer_name).layer
    real = getattr(layer, method)
    count = [0]

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if method == "forward" and not kwargs.get("train"):
            return out
        count[0] += 1
        if count[0] >= after_calls:
            arr = out if method == "forward" else out[0]
            arr.reshape(-1)[arr.size // 2] = np.nan
        return out
    setattr(layer, method, poisoned)


def test_nan_in_an_output_stops_training_naming_layer_epoch_batch(tmp_path, tiny):
    run = tmp_path / "run"
    trainer = Trainer(tiny, out=str(run), log=quiet)
    poison(trainer, "pool1", "forward", after_calls=8 + 3)    # 8 batches an epoch: epoch 2, batch 3
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    message = str(info.value)
    assert "the output of layer 'pool1'" in message
    assert "epoch 2, batch 3" in message and "learning rate" in message
    assert str(run / "1.json") in message
    assert checkpoint.list_checkpoints(str(run)) == [str(run / "1.json")]   # still the newest


def test_nan_in_a_gradient_names_the_layer_that_made_it(tmp_path, tiny):
    trainer = Trainer(tiny, out=str(tmp_path / "run"), log=quiet)
    poison(trainer, "fc1", "backward", after_calls=2)
    with pytest.raises(NonFiniteError, match=r"input gradient of layer 'fc1'.*epoch 1, batch 2"):
        trainer.run()


def test_weights_are_not_updated_with_a_nan_gradient(tmp_path, tiny):
    trainer = Trainer(tiny, out=str(tmp_path / "run"), log=quiet)
    poison(trainer, "fc1", "backward", after_calls=1)
    with pytest.raises(NonFiniteError):
        trainer.run()
    assert all(all_finite(p) for p in trainer.net.parameters().values())


def test_cli_too_high_learning_rate_is_one_line_exit_1(tmp_path, tiny):
    r = run_cli("train", tiny, "--out", str(tmp_path / "run"), "--lr", "1e30")
    assert r.returncode == 1, (r.stdout, r.stderr)
    # stderr also carries the progress lines ("compiling kernels ..."): the error is the last line
    err = [line for line in r.stderr.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1 and r.stderr.strip().endswith(err[0]) and "Traceback" not in r.stderr
    assert "learning rate (1e+30)" in err[0] and "epoch 1, batch" in err[0] and "layer '" in err[0]


# ---- determinism ---------------------------------------------------------------------------
def test_same_seed_gives_bit_identical_weights(tmp_path, tiny):
    a = Trainer(tiny, out=str(tmp_path / "a"), log=quiet, seed=3).run()
    b = Trainer(tiny, out=str(tmp_path / "b"), log=quiet, seed=3).run()
    pa, _ = params_of(tmp_path / "a")
    pb, _ = params_of(tmp_path / "b")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
    assert [m["train_loss"] for m in a["metrics"]] == [m["train_loss"] for m in b["metrics"]]
    c = Trainer(tiny, out=str(tmp_path / "c"), log=quiet, seed=4, epochs=1).run()
    assert c["metrics"][0]["train_loss"] != a["metrics"][0]["train_loss"]


# ---- memory ----------------------------------------------------------------------------------
def test_a_training_batch_that_cannot_fit_is_refused_before_the_first_step(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "3M")
    with pytest.raises(engine.MemoryLimitError) as info:
        Trainer(tiny, out=str(tmp_path / "run"), log=quiet, batch=4096)
    assert 0 < info.value.largest_batch < 4096
    assert f"largest batch that fits is {info.value.largest_batch}" in str(info.value)
    r = subprocess.run([sys.executable, "-m", "engine", "train", tiny, "--out", str(tmp_path / "r"),
                        "--batch", "4096"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, ENGINE_MEMORY_LIMIT="3M"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()                    # refused before anything was written
    # the batch it names does fit
    Trainer(tiny, out=str(tmp_path / "ok"), log=quiet, epochs=1, batch=info.value.largest_batch).run()
