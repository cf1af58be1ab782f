"""A cold cache's first training step, compiled on more than one core.

A fresh install compiles every kernel of the first step one after another: Numba's compiler
runs on one thread, under a process-wide lock (LeNet-5: 15 kernels, ~18 s on this project's
2-core machine). So when the first step finds a kernel missing from the on-disk cache, the
trainer starts helper processes (`python -m engine.compile_ahead`, one per spare core, at
most MAX_HELPERS). Each builds the same net, rehearses one step with the kernels not running
(layers.threads.rehearse: which kernels, with which argument types, in which order) and
compiles those from the last one back (threads.compile_calls), while the trainer compiles
from the first one on. The lock beside each cached kernel keeps two processes off one
kernel; the trainer loads from the cache what a helper compiled. When the step is done the
helpers are stopped (Numba writes each cache file whole, then renames it).

Best effort throughout: a helper that fails or guesses an argument type wrong costs some
CPU, never a result. Not for MPI ranks (they already share the compiling through the same
locks), CUDA, nets with plugins (code the helper would have to import again), or resumed
runs. ENGINE_COMPILE_AHEAD=0 turns it off (the test suite does, but for its own tests).
"""
import contextlib
import json
import os
import subprocess
import sys

ENV = "ENGINE_COMPILE_AHEAD"
MAX_HELPERS = 3


def spare_cores():
    from engine import columns
    return max(0, min(columns.usable_cpus() - 1, MAX_HELPERS))


def request(trainer, x, labels, lr):
    """What a helper needs to rebuild the trainer's net and step (JSON), or None where
    compiling ahead does not apply."""
    spec = trainer.spec
    if (os.environ.get(ENV, "1") == "0" or trainer.world is not None or trainer.resume_meta is not None
            or spec.plugins or trainer.net.backend.kind != "cpu" or not spare_cores()):
        return None
    from engine.train import _net_text
    settings = {k: v for k, v in trainer.settings.items() if k != "data"}
    return {"net": _net_text(spec), "overrides": list(spec.overrides), "settings": settings,
            "batch": int(x.shape[0]), "x_dtype": x.dtype.str, "labels_dtype": labels.dtype.str,
            "lr": float(lr)}


@contextlib.contextmanager
def helping(trainer, x, labels, lr):
    """Around the trainer's first step: helpers start at its first compile, stop at its end."""
    job = request(trainer, x, labels, lr)
    if job is None:
        yield
        return
    from layers import threads
    helpers = []

    def start():
        text = json.dumps(job).encode()
        for _ in range(spare_cores()):
            try:
                helpers.append(subprocess.Popen([sys.executable, "-m", "engine.compile_ahead"],
                                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
                helpers[-1].stdin.write(text)
                helpers[-1].stdin.close()
            except OSError:            # no process to spare, or it ended: the step compiles as before
                return
    try:
        with threads.when_compiling(start):
            yield
    finally:
        for proc in helpers:
            proc.terminate()
        for proc in helpers:
            proc.wait()


def rehearsed_calls(job):
    """The kernel calls of one training step of the job's net: built as the trainer builds it,
    rehearsed on zeros of the batch's shape."""
    import numpy as np
    from engine import settings as settings_mod
    from engine.config import parse_net
    from engine.net import Net
    from layers import threads
    settings = job["settings"]
    spec = parse_net(job["net"], overrides=job["overrides"])
    settings_mod.apply_cost_settings(spec, settings)
    net = Net(spec, seed=settings["seed"])
    solver = settings_mod.make_optimizer(settings, net)
    x = np.zeros((job["batch"],) + tuple(net.input_shape), np.dtype(job["x_dtype"]))
    labels = np.zeros(job["batch"], np.dtype(job["labels_dtype"]))
    with threads.rehearse() as calls, np.errstate(all="ignore"):
        try:
            _, grads = net.loss_and_grads(x, labels, train=True)
            solver.step(grads, job["lr"])
        except Exception:        # noqa: BLE001  meaningless values may trip a check: what came before counts
            pass
    return calls


def main():
    from layers import threads
    threads.compile_calls(rehearsed_calls(json.load(sys.stdin)))


if __name__ == "__main__":
    main()
