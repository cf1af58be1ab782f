"""Compiling a cold cache's first step in helper processes (engine.compile_ahead): the
rehearsal finds the step's kernels without running them, the helpers compile them from the
last one back, and the trainer's results do not change."""
import fcntl
import json
import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

from engine import compile_ahead
from engine.train import Trainer
from layers import threads
from layers.conv import cpu as conv_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@threads.kernel
def add_one(a):
    for i in numba.prange(a.size):
        a[i] += 1.0


def test_a_rehearsal_records_each_kernel_call_once_and_runs_nothing():
    x = np.ones((2, 3, 4, 4), np.float32)
    xpad = np.full((2, 3 * 6 * 6), 7.0, np.float32)
    with threads.rehearse() as calls:
        with threads.serial(False):                       # the parallel kernel, small as x is
            conv_cpu.pad_images(x, 1, 1, 1, 6, 6, xpad)
            conv_cpu.pad_images(x, 1, 1, 1, 6, 6, xpad)         # the same call: recorded once
        with threads.serial():
            conv_cpu.pad_images(x, 1, 1, 1, 6, 6, xpad)         # the serial twin: a call of its own
        other = threading.Thread(target=add_one, args=(np.zeros(3, np.float64),))
        other.start()
        other.join()
    assert (xpad == 7.0).all()                            # nothing ran
    args_types = tuple(numba.typeof(a) for a in (x, 1, 1, 1, 6, 6, xpad))
    assert calls[:2] == [(conv_cpu.pad_images, False, None, args_types),
                         (conv_cpu.pad_images, True, None, args_types)]
    assert calls[2][0] is add_one and str(calls[2][3][0]) == "array(float64, 1d, C)"
    assert len(calls) == 3
    conv_cpu.pad_images(x, 1, 1, 1, 6, 6, xpad)                 # after the block kernels run again
    assert xpad.reshape(2, 3, 6, 6)[0, 0, 1, 1] == 1.0


def test_compile_calls_compiles_what_was_rehearsed_unless_another_process_holds_it():
    a = np.zeros(5, np.float32)
    with threads.rehearse() as calls:
        add_one(a)
    _, serial, choice, types_ = calls[0]
    dispatcher = add_one._dispatcher(serial, choice)
    if types_ in dispatcher.overloads:       # compiled already in this worker (a rerun)
        pytest.skip("add_one(float32[:]) already compiled in this process")
    lock = os.path.join(dispatcher._cache._cache_path, dispatcher.py_func.__qualname__ + ".lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)       # another open file: as another process holds it
        threads.compile_calls(calls)
        assert types_ not in dispatcher.overloads      # passed over, not waited for
        fcntl.flock(held, fcntl.LOCK_UN)
    threads.compile_calls(calls)
    assert types_ in dispatcher.overloads
    before = threads.COMPILING.seconds()
    add_one(a)
    assert threads.COMPILING.seconds() == before and (a == 1.0).all()


def kernel_calls(calls):
    """Comparable calls: (dispatcher name, serial, choice, argument types)."""
    return {(k._dispatcher(serial, choice).py_func.__qualname__, serial, choice, types_)
            for k, serial, choice, types_ in calls}


@pytest.mark.parametrize("net", ["lenet5", "cifar10-18pct"])
def test_the_helpers_rehearsal_is_the_trainers_first_step(net, tmp_path, monkeypatch):
    """What a helper rebuilds from the trainer's request (JSON) and rehearses is what the
    trainer's own first step calls: the same kernels, twins, variants and argument types."""
    trainer = Trainer(os.path.join(ROOT, "nets", f"{net}.yaml"), data="synthetic:64", batch=32,
                      out=str(tmp_path), log=lambda *a: None, overrides=["train.epochs=1"])
    raw, labels = next(iter(trainer.source.batches("train", 32, rng=np.random.default_rng(0))))
    x = trainer.pre.train(raw, np.random.default_rng(1))
    real, seen, call = [], set(), threads.Kernel.__call__

    def recording(kernel, *args):
        choice = None if kernel._at is None else kernel.variants.pick(args[kernel._at])
        entry = (kernel, threads.runs_serial(args), choice, tuple(numba.typeof(a) for a in args))
        if entry not in seen:
            seen.add(entry)
            real.append(entry)
        return call(kernel, *args)
    monkeypatch.setattr(threads.Kernel, "__call__", recording)
    trainer._step(x, labels, 0.01, 0, 0)
    monkeypatch.setattr(threads.Kernel, "__call__", call)
    monkeypatch.setenv(compile_ahead.ENV, "1")
    monkeypatch.setattr(compile_ahead, "spare_cores", lambda: 1)
    job = json.loads(json.dumps(compile_ahead.request(trainer, x, labels, 0.01)))
    rehearsed = compile_ahead.rehearsed_calls(job)
    assert len(rehearsed) > 8
    assert kernel_calls(rehearsed) == kernel_calls(real)


def test_no_helpers_where_they_do_not_apply(tmp_path, monkeypatch):
    trainer = Trainer(os.path.join(ROOT, "nets", "lenet5.yaml"), data="synthetic:64", batch=32,
                      out=str(tmp_path), log=lambda *a: None)
    x, labels = np.zeros((32, 1, 28, 28), np.float32), np.zeros(32, np.int64)
    monkeypatch.setenv(compile_ahead.ENV, "1")
    monkeypatch.setattr(compile_ahead, "spare_cores", lambda: 1)
    assert compile_ahead.request(trainer, x, labels, 0.1) is not None
    monkeypatch.setattr(compile_ahead, "spare_cores", lambda: 0)          # one core
    assert compile_ahead.request(trainer, x, labels, 0.1) is None
    monkeypatch.setattr(compile_ahead, "spare_cores", lambda: 1)
    monkeypatch.setenv(compile_ahead.ENV, "0")                            # turned off
    assert compile_ahead.request(trainer, x, labels, 0.1) is None


DRIVER = """
import json, sys
from numba.core import event
compiled, depth = [], [0]
class Listener(event.Listener):
    def on_start(self, ev):
        depth[0] += 1
    def on_end(self, ev):
        depth[0] -= 1
        if depth[0] == 0:
            compiled.append(ev.data["dispatcher"].py_func.__qualname__)
event.register("numba:compile", Listener())
from engine.cli import main
code = main(sys.argv[1:])
print("COMPILED " + json.dumps(compiled))
sys.exit(code)
"""


def train_fresh(tmp_path, cache, ahead):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), ENGINE_COMPILE_AHEAD=ahead)
    out = subprocess.run([sys.executable, "-c", DRIVER, "train", os.path.join(ROOT, "nets", "lenet5.yaml"),
                          "--data", "synthetic:256", "--set", "train.epochs=1", "--set", "train.batch=64",
                          "--out", str(tmp_path / f"run-{ahead}")],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    return (json.loads(next(line for line in lines if line.startswith("COMPILED "))[9:]),
            next(line for line in lines if line.startswith("epoch ")))


@pytest.mark.slow
def test_a_cold_first_step_shares_its_compiling_with_a_helper_and_trains_the_same(tmp_path):
    """A fresh cache: the helper compiles the step's last kernels (the update comes last;
    the trainer compiles from the first), the trainer loads them; a second run on the now
    warm cache without helpers trains to the same loss."""
    compiled, epoch = train_fresh(tmp_path, tmp_path / "cache", "1")
    assert "sgd_update" not in compiled and "direct_dx__serial_numpy_errors" not in compiled
    assert "pad_images__serial_numpy_errors" in compiled           # the trainer's own first
    again, epoch_again = train_fresh(tmp_path, tmp_path / "cache", "0")
    assert again == [] or set(again) <= {"_count_nonfinite"}        # all loaded from the cache
    loss = epoch.split("train loss")[1].split()[0]
    assert loss == epoch_again.split("train loss")[1].split()[0]
