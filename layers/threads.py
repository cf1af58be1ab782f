"""Threading for the CPU kernels: Numba's threading layer, and serial twins of every kernel.

The GNU OpenMP layer that the numba wheels default to costs ~5 ms per parallel call
on small VMs (measured: shared/notes/numba.md) and kills forked children;
`workqueue` costs ~20 us and is fork-safe. A user's NUMBA_THREADING_LAYER wins.

`kernel` compiles each entry-point kernel twice, each when first called: with
`parallel=True` (intra-op threads, the default) and as a serial twin. A thread inside
`serial()` gets the twins, so two threads can each run one column of a net on one core:
workqueue cannot run parallel regions from two threads at once, and one core per column
avoids the fork/join cost of small parallel calls altogether. Elsewhere a call whose
arrays total under SMALL_BYTES runs the twin too (`small`). A kernel with `Variants` is
compiled once per choice it is called with (the activation kernels: relu's loops apart
from the identity's), lazily; whatever is compiled is cached on disk, and one process at a
time compiles a kernel.
"""
import contextlib
import functools
import importlib.util
import inspect
import os
import threading
import time
import types

import numba
import numpy as np
from numba.core import event as numba_event

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_local = threading.local()


def is_serial():
    """True inside `serial()` on this thread."""
    return getattr(_local, "serial", None) is True


@contextlib.contextmanager
def serial(on=True):
    """Within the block, kernels called from this thread run their serial twins; with
    on=False their parallel kernels, whatever the size of the call (outside any such block,
    a call that is `small` runs the serial twin)."""
    before = getattr(_local, "serial", None)
    _local.serial = bool(on)
    try:
        yield
    finally:
        _local.serial = before


def runs_serial(args):
    """Whether a kernel call with these arguments on this thread runs the serial twin."""
    chosen = getattr(_local, "serial", None)
    return small(args) if chosen is None else chosen


def _renamed(fn, suffix, replace=None):
    """A copy of fn under another qualname, so Numba's on-disk cache keeps the compilations
    apart (its index is keyed by module, qualname and line, not by flags); `replace` swaps
    some of the globals it calls (a Variants choice)."""
    env = fn.__globals__ if not replace else {**fn.__globals__, **replace}
    twin = types.FunctionType(fn.__code__, env, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return twin


class Variants:
    """Compile a kernel once per value of one argument that it is called with, lazily.

    arg: the argument's name; choices: {value: variant name} for the values that get a
    compilation of their own, `other` the variant of every other value; replace: {variant
    name: {global name: replacement}}, what each variant's copy of the kernel calls instead.
    A kernel called only with one value compiles only that one's loops (the activation
    kernels: relu's, not every function's)."""

    def __init__(self, arg, choices, other, replace):
        self.arg, self.choices, self.other, self.replace = arg, choices, other, replace

    def pick(self, value):
        return self.choices.get(value, self.other)


class CompileClock(numba_event.Listener):
    """Seconds this process has spent in Numba's compiler (loading from the on-disk cache
    is not compiling). Compiles nest (a kernel compiles its callees) and hold Numba's
    process-wide lock, so one depth counter serves every thread."""

    def __init__(self):
        self.depth, self.started, self.total = 0, 0.0, 0.0
        self.hooks = []             # each called once, at the next outermost compile (add_hook)

    def add_hook(self, hook):
        """hook() is called once, when this process next starts compiling a kernel (a cache
        miss: loading from the on-disk cache is not compiling), inside that compile."""
        self.hooks.append(hook)

    def remove_hook(self, hook):
        """Forget a hook not called yet (nothing where it was)."""
        if hook in self.hooks:
            self.hooks.remove(hook)

    def on_start(self, event):
        if self.depth == 0:
            self.started = time.monotonic()
            hooks, self.hooks = self.hooks, []
            for hook in hooks:
                hook()
        self.depth += 1

    def on_end(self, event):
        self.depth -= 1
        if self.depth == 0:
            self.total += time.monotonic() - self.started

    def seconds(self):
        return self.total + (time.monotonic() - self.started if self.depth else 0.0)


# rates that must not count compiling (an epoch's img/s, the fuzz test's time limit) read this
COMPILING = CompileClock()
numba_event.register("numba:compile", COMPILING)

SERIAL = "__serial_numpy_errors"    # the name carries the error model: older caches stay unused
_building = threading.Lock()


@contextlib.contextmanager
def when_compiling(hook):
    """Within the block, hook() is called once, when this process first starts compiling a
    kernel (a cache miss: loading from the on-disk cache is not compiling), inside that
    compile. The trainer starts its compile-ahead helpers so (engine.compile_ahead)."""
    COMPILING.add_hook(hook)
    try:
        yield
    finally:
        COMPILING.remove_hook(hook)


@contextlib.contextmanager
def _compiling(dispatcher, wait=True):
    """Around a dispatcher's first call in this process: one process at a time compiles it.
    Processes that start together (test workers, MPI ranks on one machine) would each
    compile the same kernels; the one that waits then loads the other's from the on-disk
    cache. An exclusive lock on a file beside that cache; none where there is no flock.
    Yields whether this process holds it: with wait=False, False at once if another does."""
    try:
        import fcntl
        folder = dispatcher._cache._cache_path
    except (ImportError, AttributeError):
        yield True
        return
    try:
        handle = open(os.path.join(folder, dispatcher.py_func.__qualname__ + ".lock"), "a")
    except OSError:            # a read-only cache folder: Numba will not write there either
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- rehearsal: the kernels a step calls, found without running or compiling them -------
_rehearsal = None      # the list a rehearse() block records into; None: kernels run


@contextlib.contextmanager
def rehearse():
    """Within the block, calling a kernel (from any thread) runs and compiles nothing: it
    records (kernel, serial, variant choice, argument types) once in the list this yields
    and returns 0.0. Outputs stay as they were, so what the caller computes from them is
    meaningless: a rehearsal tells what a step would compile, in its order."""
    global _rehearsal
    calls, seen = [], set()

    def record(kernel, serial, choice, args):
        call = (kernel, serial, choice, tuple(numba.typeof(a) for a in args))
        if call not in seen:
            seen.add(call)
            calls.append(call)
    _rehearsal = record
    try:
        yield calls
    finally:
        _rehearsal = None


def compile_calls(calls):
    """Compile rehearsed calls (from rehearse()), the last first, into the on-disk cache:
    each unless this process has it already or another process holds its lock (is compiling
    it: nothing to gain from waiting). A process that meets the calls from the other end
    (the trainer, compiling as its step goes) loads what this one compiled."""
    for kernel, serial, choice, types_ in reversed(calls):
        dispatcher = kernel._dispatcher(serial, choice)
        if types_ in dispatcher.overloads:
            continue
        with _compiling(dispatcher, wait=False) as mine:
            if mine:
                dispatcher.compile(types_)


# A parallel region costs ~40-60 us to start on workqueue, and below a few MB of data the
# second core does not win it back: a scale of 262,144 floats took 93 us parallel, 31 us
# serial; 1M floats 155 vs 133; 4M floats 1.1 vs 2.1 ms (2 cores); ResNet-18's batchnorm at
# batch 1 (64x56x56) 175 vs 56 us. So a call whose arrays total less runs the serial twin.
SMALL_BYTES = 4 << 20


def small(args):
    """True when the arrays among a kernel call's arguments total under SMALL_BYTES."""
    total = 0
    for a in args:
        if isinstance(a, np.ndarray):
            total += a.nbytes
    return total < SMALL_BYTES


class Kernel:
    """A Python-callable family of Numba dispatchers: parallel and serial (`.parallel`,
    `.serial`), each once per Variants choice when the kernel has variants, built when first
    called."""

    def __init__(self, fn, flags, variants=None):
        self.fn, self.flags, self.variants = fn, flags, variants
        self._at = None if variants is None else list(inspect.signature(fn).parameters).index(variants.arg)
        self._dispatchers = {}
        if variants is None:        # the plain pair, built now (tests inspect them)
            self.parallel, self.serial = self._dispatcher(False, None), self._dispatcher(True, None)
        functools.update_wrapper(self, fn)

    def _dispatcher(self, serial, choice):
        key = (serial, choice)
        found = self._dispatchers.get(key)
        if found is None:
            with _building:
                found = self._dispatchers.get(key)
                if found is None:
                    suffix = ("" if choice is None else "__" + choice) + (SERIAL if serial else "")
                    replace = None if choice is None else self.variants.replace[choice]
                    fn = _renamed(self.fn, suffix, replace) if suffix else self.fn
                    found = self._dispatchers[key] = numba.njit(parallel=not serial, **self.flags)(fn)
        return found

    def __call__(self, *args):
        choice = None if self._at is None else self.variants.pick(args[self._at])
        serial = runs_serial(args)
        if _rehearsal is not None:
            _rehearsal(self, serial, choice, args)
            return 0.0
        dispatcher = self._dispatcher(serial, choice)
        if dispatcher.overloads:
            return dispatcher(*args)
        with _compiling(dispatcher):
            return dispatcher(*args)


def kernel_flags(fastmath=True):
    """Numba's flags for a top-level CPU kernel: nogil, cached, fastmath unless told otherwise,
    NumPy's error model (x / 0 is inf, not an exception)."""
    # error_model="numpy": what parallel=True implies anyway; without it the serial twin's
    # every `/` carries a divide-by-zero branch that stops its loops from vectorising
    return dict(nogil=True, cache=True, fastmath=fastmath, error_model="numpy")


def kernel(fn=None, *, fastmath=True, variants=None):
    """Decorator for a top-level CPU kernel (called from Python, loops over numba.prange),
    compiled with kernel_flags; parallel or serial per calling thread; compiled per
    `variants` choice."""
    if fn is None:
        return lambda f: Kernel(f, kernel_flags(fastmath), variants)
    return Kernel(fn, kernel_flags(fastmath), variants)


# ---- single images --------------------------------------------------------------------
_latency = False


def latency():
    """True where this process runs single images with their work split over the cores
    (set_latency): a layer may then pick another path at batch 1 (the convolutions: the
    direct kernels, their filters over the cores)."""
    return _latency


def set_latency(on=True, spin=True):
    """For a process that runs one image at a time (predict): latency() becomes `on`, and
    with on and spin the parallel kernels run on GNU OpenMP's workers where that is still open
    (no parallel kernel has run yet, NUMBA_THREADING_LAYER is not set, Numba has OpenMP).
    OpenMP's workers spin a while between parallel regions; workqueue's sleep, and a
    batch-1 forward is some fifty short regions, each then waiting 50 us to a millisecond
    on a VM for a worker to wake (ResNet-18 at batch 1 on 2 cores, direct convolutions
    over both: median 46-50 ms on workqueue, 31-33 on OpenMP; 42-46 as before). Spinning
    workers must not meet BLAS's, which spin too (the same on OpenMP with BLAS on 2 threads:
    49-74 ms): the engine keeps BLAS on one thread in such a process (engine.latency_mode).
    A process on OpenMP must not fork and then run kernels in the child (GNU OpenMP
    terminates it). Returns the threading layer the kernels use or will use."""
    global _latency
    _latency = bool(on)
    from numba.np.ufunc import parallel
    if on and spin and not parallel._is_initialized and "NUMBA_THREADING_LAYER" not in os.environ:
        if importlib.util.find_spec("numba.np.ufunc.omppool") is not None:    # built with OpenMP
            numba.config.THREADING_LAYER = "omp"
    return parallel.threading_layer() if parallel._is_initialized else numba.config.THREADING_LAYER


@contextlib.contextmanager
def compute_bound():
    """Within the block, kernels called from this thread run parallel however small their
    arrays (a batch-1 convolution: little data, milliseconds of work), unless the thread
    runs serial kernels (serial(): a column's thread)."""
    if is_serial():
        yield
        return
    with serial(False):
        yield


# Kernels that need scratch deal their tasks out to WORKERS fixed workers (the parallel
# loop runs over workers), each owning rows of the caller's scratch: no task allocates.
WORKERS = 32


@numba.njit(inline="always")
def worker_tasks(wk, workers, total):
    """Worker wk's contiguous run [t0, t1) of tasks 0 .. total-1."""
    return wk * total // workers, (wk + 1) * total // workers


# Flat element-wise kernels split their arrays into tasks of CHUNK elements.
CHUNK = 16384


@numba.njit(inline="always")
def chunks(n):
    """Tasks of CHUNK elements that cover n."""
    return (n + CHUNK - 1) // CHUNK


@numba.njit(inline="always")
def chunk_slice(c, n):
    """Task c's elements of n. Kernels loop over slices of their arrays by it, from 0: a loop
    over range(c * CHUNK, ...) indexing the whole arrays did not vectorise (Numba wraps a
    negative index, and LLVM could not prove the start >= 0; relu over 4 MB 0.63 against
    0.07-0.09 ms), and one indexing them at start + j vectorised serial but not parallel (0.75
    against 0.11-0.23 ms)."""
    return slice(c * CHUNK, min(n, (c + 1) * CHUNK))
