"""Threading for the CPU kernels: Numba's threading layer, and serial twins of every kernel.

The GNU OpenMP layer that the numba wheels default to costs ~5 ms per parallel call
on small VMs (measured: shared/notes/numba.md) and kills forked children;
`workqueue` costs ~20 us and is fork-safe. A user's NUMBA_THREADING_LAYER wins.

`kernel` compiles each entry-point kernel twice: with `parallel=True` (intra-op threads,
the default) and as a serial twin. A thread inside `serial()` gets the twins, so two
threads can each run one column of a net on one core: workqueue cannot run parallel
regions from two threads at once, and one core per column avoids the fork/join cost
of small parallel calls altogether.
"""
import contextlib
import functools
import os
import threading
import types

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_local = threading.local()


def is_serial():
    """True inside `serial()` on this thread."""
    return getattr(_local, "serial", False)


@contextlib.contextmanager
def serial(on=True):
    """Within the block, kernels called from this thread run their serial twins."""
    before = is_serial()
    _local.serial = bool(on)
    try:
        yield
    finally:
        _local.serial = before


def _renamed(fn, suffix):
    """A copy of fn under another qualname, so Numba's on-disk cache keeps the two
    compilations apart (its index is keyed by module, qualname and line, not by flags)."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return twin


class Kernel:
    """A Python-callable pair of dispatchers; `.parallel` and `.serial` are the Numba ones."""

    def __init__(self, fn, flags):
        self.parallel = numba.njit(parallel=True, **flags)(fn)
        # the name carries the error model: a cache written before it was set stays unused
        self.serial = numba.njit(parallel=False, **flags)(_renamed(fn, "__serial_numpy_errors"))
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if getattr(_local, "serial", False):
            return self.serial(*args)
        return self.parallel(*args)


def kernel(fn=None, *, fastmath=True):
    """Decorator for a top-level CPU kernel (called from Python, loops over numba.prange):
    nogil, cached, fastmath unless told otherwise, NumPy's error model (x / 0 is inf, not
    an exception); parallel or serial per calling thread."""
    # error_model="numpy": what parallel=True implies anyway; without it the serial twin's
    # every `/` carries a divide-by-zero branch that stops its loops from vectorising
    flags = dict(nogil=True, cache=True, fastmath=fastmath, error_model="numpy")
    if fn is None:
        return lambda f: Kernel(f, flags)
    return Kernel(fn, flags)


# Kernels that need scratch deal their tasks out to WORKERS fixed workers (the parallel
# loop runs over workers), each owning rows of the caller's scratch: no task allocates.
WORKERS = 32


@numba.njit(inline="always")
def worker_tasks(wk, workers, total):
    """Worker wk's contiguous run [t0, t1) of tasks 0 .. total-1."""
    return wk * total // workers, (wk + 1) * total // workers
