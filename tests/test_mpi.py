"""Data-parallel training over MPI (engine.distributed): the launch, the shares of a batch, and
real `mpirun -n 2` jobs on this machine (loopback only) against one-process runs: the same
weights, losses and validation figures; SIGTERM, SIGKILL of a rank, an error on one rank,
resuming with another rank count (batchnorm nets: tests/test_mpi_batchnorm.py). The mpirun
tests need `pip install -e '.[mpi]'`."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import checkpoint, cli, distributed
from engine.datasets import Preprocess, open_source
from engine.datasets._base import part_slice
from engine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = shutil.which("mpirun") or shutil.which("mpirun", path=os.path.dirname(sys.executable))
HAVE_MPI = MPIRUN is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="no mpirun/mpi4py: pip install -e '.[mpi]'")

# dropout, random shifts and flips, a last batch of 10 (5 per rank), weight decay, momentum
SMALL = """\
name: small
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: pool1, type: pool, mode: max, size: 2}
  - {name: fc1, type: fc, outputs: 32, neuron: relu, init_w: 0.05}
  - {name: drop1, type: dropout, rate: 0.5}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
train: {data: "synthetic:100", epochs: 2, batch: 30, lr: 0.05, augment: {shift: 1, flip: true}}
"""

TWO_COLUMNS = """\
name: twocol
input: {shape: [1, 12, 12]}
layers:
  - {name: c1a, type: conv, inputs: [data], gpu: 0, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: c1b, type: conv, inputs: [data], gpu: 1, filters: 4, size: 3, padding: 1, neuron: relu, init_w: 0.1}
  - {name: p1a, type: pool, inputs: [c1a], gpu: 0, mode: max, size: 2}
  - {name: p1b, type: pool, inputs: [c1b], gpu: 1, mode: max, size: 2}
  - {name: f2a, type: fc, inputs: [p1a, p1b], gpu: 0, outputs: 16, neuron: relu, init_w: 0.05}
  - {name: f2b, type: fc, inputs: [p1b], gpu: 1, outputs: 16, neuron: relu, init_w: 0.05}
  - {name: d2b, type: dropout, gpu: 1, rate: 0.3}
  - {name: f3, type: fc, inputs: [f2a, d2b], gpu: 0, outputs: 4, init_w: 0.05}
  - {name: prob, type: softmax}
train: {data: "synthetic:90", epochs: 2, batch: 31, lr: 0.05, augment: {flip: true}}
"""

# fc1's 1.2M weights: steps and checkpoints slow enough for a signal to land mid-epoch.
# Smooth neurons and average pooling: with relu and max pooling, each epoch's ten million
# on/off decisions made a one-ulp difference (one rank count's summing order against the
# other's) flip a few, moving a unit's bias by 1% of the largest: one process resuming its
# own epoch checkpoint with the weights moved by an ulp or ten (x(1 +- 1e-7), x(1 +- 1e-6))
# ended 1-2.4% off in two tries of three; with these layers 2.7e-6 at most in five, so the
# comparisons below can ask for 1e-5.
LONG = """\
name: long
input: {shape: [1, 12, 12]}
layers:
  - {name: conv1, type: conv, filters: 8, size: 3, padding: 1, neuron: tanh, init_w: 0.1}
  - {name: pool1, type: pool, mode: avg, size: 2}
  - {name: fc1, type: fc, outputs: 4096, neuron: tanh, init_w: 0.01}
  - {name: drop1, type: dropout, rate: 0.5}
  - {name: fc2, type: fc, outputs: 4, init_w: 0.01}
  - {name: prob, type: softmax}
train: {data: "synthetic:1280", epochs: 3, batch: 32, lr: 0.01}
"""

# a layer that fails on rank 1 only, at its second training step (an injected fault)
FAULT = '''\
import os
from layers.base import Layer
from layers.registry import register


@register
class FailOnRankOne(Layer):
    type = "fail_on_rank_one"
    doc = "the identity; raises on MPI rank 1 at its second training pass"
    steps = 0

    def setup(self, input_shape):
        return input_shape

    def forward(self, x, params, train=False, rng=None):
        if train and os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
            FailOnRankOne.steps += 1
            if FailOnRankOne.steps == 2:
                raise OSError("disk image 17 unreadable on this machine")
        return x

    def backward(self, dy, params, need_dx=True):
        return dy, {}
'''


# SIGTERM to rank 1 alone, after it has sent its stop request of a step to the others (none),
# before it looks at the answer: the latest a signal can land in a step
LATE_SIGNAL = '''\
import os
import signal

from engine import distributed
from layers.base import Layer
from layers.registry import register

_gather = distributed.World.gather
_steps = [0]


def gather(self, values):
    every = _gather(self, values)
    if self.rank == 1 and len(values) == 2:           # a training step's [loss, stop request]
        _steps[0] += 1
        if _steps[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    return every


distributed.World.gather = gather


@register
class Unchanged(Layer):
    type = "unchanged"
    doc = "the identity (the file's point is the signal above)"

    def setup(self, input_shape):
        return input_shape

    def forward(self, x, params, train=False, rng=None):
        return x

    def backward(self, dy, params, need_dx=True):
        return dy, {}
'''

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_process(net, out, **kwargs):
    return Trainer(net, out=str(out), log=lambda *a: None, **kwargs).run()


def mpirun(n, *args, wait=True, timeout=300):
    """`mpirun -n N python -m engine train ARGS` on this machine alone (loopback, shared memory)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", "--host", f"127.0.0.1:{n}",
           "--mca", "btl_tcp_if_include", "lo", sys.executable, "-m", "engine", "train", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:         # a hung job: its ranks and mpirun go, then the test fails
        for pid in rank_pids(proc).values():
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"mpirun -n {n} did not end within {timeout} s: {err[-2000:]}") from None
    return proc.returncode, out, err


def params(run_dir):
    arrays, meta = checkpoint.load(str(run_dir))
    return {k: v for k, v in arrays.items() if k.startswith("param/")}, meta


def assert_close_runs(a, b, rtol=1e-5):
    pa, ma = params(a)
    pb, mb = params(b)
    assert (ma["epoch"], ma["batch"]) == (mb["epoch"], mb["batch"])
    for k in pa:
        scale = float(np.abs(pa[k]).max())
        assert np.abs(pa[k] - pb[k]).max() <= rtol * scale, f"{k} differs"
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([m[key] for m in ma["metrics"]], [m[key] for m in mb["metrics"]], rtol=rtol)
    assert [m["val_top1"] for m in ma["metrics"]] == [m["val_top1"] for m in mb["metrics"]]
    assert [m["val_top5"] for m in ma["metrics"]] == [m["val_top5"] for m in mb["metrics"]]


def rank_pids(proc):
    """{rank: pid} of mpirun's rank processes (its children with OMPI_COMM_WORLD_RANK)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != proc.pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
        except (OSError, KeyError, ValueError, IndexError):
            pass
    return found


def wait_for(proc, text, timeout=240):
    """The first line of proc's output holding text."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"never printed {text!r}: {proc.stderr.read()[-2000:]}")


def epoch_seconds(line):
    """The seconds an epoch took, from its log line ("... lr 0.01  0.4s  (5034 img/s)")."""
    return float(re.search(r"([0-9.]+)s  \(", line).group(1))


SHARE = """
import json, os
import numba
from threadpoolctl import threadpool_info
from engine import distributed
world = distributed.World.__new__(distributed.World)
world.local_size = os.cpu_count() or 1             # as many ranks as cores on this machine
print(json.dumps([world.share_threads(), numba.get_num_threads(), os.environ.get("ENGINE_THREADING"),
                  sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})]))
"""


def test_a_rank_takes_its_share_of_the_cores_for_numba_and_the_blas():
    """Ranks each running a BLAS thread per core of the machine oversubscribed it (lenet5 on 2
    ranks of 2 cores: 4x slower than with one BLAS thread per rank)."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.BLAS_VARS + ("NUMBA_NUM_THREADS", "ENGINE_THREADING")}
    out = subprocess.run([sys.executable, "-c", SHARE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == [1, 1, "layers", [1]]
    env["OPENBLAS_NUM_THREADS"] = "2"                 # the user's own setting is kept
    out = subprocess.run([sys.executable, "-c", SHARE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out)[3] == [2]

# ---- no MPI: nothing changes --------------------------------------------------------------
def test_launch_is_read_from_the_environment():
    assert distributed.launched_size({}) == 1
    assert distributed.launched_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert distributed.launched_size({"PMI_SIZE": "2"}) == 2
    assert distributed.launched_size({"PMIX_RANK": "0"}) is None      # srun --mpi=pmix: ask MPI


def test_without_a_launcher_mpi4py_is_never_imported():
    code = ("import sys, engine.cli, engine.train, engine.distributed as d; "
            "assert d.from_environment() is None; assert 'mpi4py' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "MV2_"))}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_mpirun_without_mpi4py_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py fails
    assert cli.main(["train", write(tmp_path, "small.yaml", SMALL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mpi4py is not installed" in err[0] and "pip install -e '.[mpi]'" in err[0], err


def test_buckets_hold_the_gradients_in_reverse_layer_order():
    class World:
        bucket_bytes = 4 * 100

    class Backend:
        kind = "cpu"
    shapes = {"a.weight": (10, 5), "a.bias": (10,), "b.weight": (30, 4), "b.bias": (30,), "c.weight": (2,)}
    ex = distributed.GradientExchange(World(), shapes, Backend())
    assert [[key for key, _, _ in entries] for _, entries in ex.buckets] == \
        [["c.weight", "b.bias"], ["b.weight"], ["a.bias", "a.weight"]]     # b.weight alone: over 100 floats
    assert list(ex.summed) == list(shapes) and all(ex.summed[k].shape == s for k, s in shapes.items())


# ---- the shares of a batch ------------------------------------------------------------------
def test_the_shares_of_every_batch_make_the_single_process_batch():
    src = open_source("digits", (1, 28, 28))
    whole = list(src.batches("train", 100, rng=np.random.default_rng(3)))
    for size in (2, 3):
        shares = [list(src.batches("train", 100, rng=np.random.default_rng(3), part=(r, size)))
                  for r in range(size)]
        for b, (x, y) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([s[b][0] for s in shares]), x)
            np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shares]), y)
    assert [part_slice(5, r, 3) for r in range(3)] == [(0, 1), (1, 3), (3, 5)]
    assert len(list(src.batches("val", 1, part=(1, 2)))) == src.num_val        # empty shares kept


def test_augmenting_a_share_draws_as_for_the_whole_batch():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (7, 3, 12, 12)).astype(np.uint8)
    basis = (np.array([0.2, 0.5, 3.0]), np.linalg.qr(rng.standard_normal((3, 3)))[0])
    pre = Preprocess((3, 8, 8), np.full((3, 1, 1), 100.0, np.float32), scale=0.01, crop=True, flip=True,
                     pca=0.1, pca_basis=basis, shift=1)
    whole_rng = np.random.default_rng(5)
    whole = pre.train(raw, whole_rng)
    for a, b in ((0, 3), (3, 7), (2, 2)):
        part_rng = np.random.default_rng(5)
        np.testing.assert_array_equal(pre.train(raw[a:b], part_rng, rows=(a, 7)), whole[a:b])
        assert part_rng.bit_generator.state == whole_rng.bit_generator.state


# ---- real mpirun jobs ---------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("text", [SMALL, TWO_COLUMNS], ids=["dropout", "two-columns"])
def test_two_ranks_train_as_one_process(tmp_path, text):
    net = write(tmp_path, "net.yaml", text)
    one_process(net, tmp_path / "one")
    rc, out, err = mpirun(2, net, "--out", str(tmp_path / "two"))
    assert rc == 0, err[-3000:]
    assert out.count("epoch   1 ") == 1          # rank 0 alone speaks
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    assert_close_runs(tmp_path / "one", tmp_path / "two")


@needs_mpi
@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_job_with_its_message(tmp_path):
    write(tmp_path, "fault.py", FAULT)
    net = write(tmp_path, "fault.yaml", SMALL.replace("name: small\n", "name: fault\nplugins: [fault.py]\n")
                .replace("  - {name: fc2,", "  - {name: oops, type: fail_on_rank_one}\n  - {name: fc2,"))
    start = time.time()
    rc, out, err = mpirun(2, net, "--plugins", "--out", str(tmp_path / "f"), timeout=180)
    assert rc != 0 and "rank 1 of 2" in err and "disk image 17 unreadable" in err, err[-3000:]
    assert time.time() - start < 180


@needs_mpi
@pytest.mark.slow
def test_a_signal_landing_on_one_rank_after_the_step_agreed_stops_every_rank_one_step_later(tmp_path):
    """Each rank acts on the stop the ranks agreed, never on its own flag alone: rank 1 stopping
    after step 2 by itself left rank 0 waiting in step 3's collective for ever."""
    write(tmp_path, "late.py", LATE_SIGNAL)
    net = write(tmp_path, "late.yaml", SMALL.replace("name: small\n", "name: late\nplugins: [late.py]\n")
                .replace("  - {name: fc2,", "  - {name: same, type: unchanged}\n  - {name: fc2,"))
    rc, out, err = mpirun(2, net, "--plugins", "--out", str(tmp_path / "late"), timeout=180)
    assert rc == 143, err[-3000:]
    _, meta = params(tmp_path / "late")
    assert (meta["epoch"], meta["batch"]) == (0, 3), meta        # the step after the signal


@needs_mpi
@pytest.mark.slow
def test_signals_kills_and_resuming_with_another_rank_count(tmp_path):
    net = write(tmp_path, "long.yaml", LONG)
    one_process(net, tmp_path / "ref")

    # SIGTERM to the ranks (what a batch system's cancel sends): one checkpoint, exit 143
    job = mpirun(2, net, "--out", str(tmp_path / "term"), wait=False)
    # into epoch 2 however fast the machine: a fixed second ran past the end of the run
    # (0.3 s epochs on a Zen 4)
    time.sleep(0.4 * epoch_seconds(wait_for(job, "epoch   1 ")))
    for pid in rank_pids(job).values():
        os.kill(pid, signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-3000:]
    # the epochs done (1, or 2 where epoch 2 ended within the second), then the stop's "E-B"
    # one; none where the signal came in epoch 2's validation or saving (its checkpoint is the stop's)
    saved = [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path / "term"))]
    epochs = [name for name in saved if "-" not in name]
    assert saved[:len(epochs)] == epochs and len(saved) - len(epochs) <= 1, saved
    assert 2 <= len(saved) <= 3 and "3.json" not in saved, saved       # stopped before the end
    one_process(None, tmp_path / "term", resume=str(tmp_path / "term"))       # N = 1 after N = 2
    assert_close_runs(tmp_path / "ref", tmp_path / "term")

    # SIGKILL of rank 1 mid-epoch 2: mpirun notices and ends the job, naming the rank. A kill
    # that came after epoch 2's checkpoint (an epoch 2 faster than epoch 1, under CI's other
    # tests) is tried again sooner, so that the one-rank resume below starts at epoch 2
    fraction = 0.3
    for _ in range(4):
        shutil.rmtree(tmp_path / "kill", ignore_errors=True)
        job = mpirun(2, net, "--out", str(tmp_path / "kill"), wait=False)
        time.sleep(fraction * epoch_seconds(wait_for(job, "epoch   1 ")))
        killed = time.time()
        os.kill(rank_pids(job)[1], signal.SIGKILL)
        out, err = job.communicate(timeout=60)
        assert job.returncode != 0 and time.time() - killed < 60
        assert "rank 1" in err, err[-3000:]
        saved = [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path / "kill"))]
        if saved == ["1.json"]:
            break
        fraction = fraction / 3 if "2.json" in saved else fraction * 2     # before epoch 1's save: later
    assert saved == ["1.json"], saved                   # killed in epoch 2
    for path in checkpoint.list_checkpoints(str(tmp_path / "kill")):
        checkpoint.verify(path)
    shutil.copytree(tmp_path / "kill", tmp_path / "kill1")
    rc, out, err = mpirun(2, "--resume", str(tmp_path / "kill"))                 # N = 2 again
    assert rc == 0, err[-3000:]
    assert_close_runs(tmp_path / "ref", tmp_path / "kill")
    one_process(None, tmp_path / "kill1", resume=str(tmp_path / "kill1"))     # and N = 1
    assert_close_runs(tmp_path / "ref", tmp_path / "kill1")
