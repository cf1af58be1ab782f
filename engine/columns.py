"""How the CPU cores run a net: threading "columns", "batch" or "layers" (Net.threading).

cuda-convnet put each column (`gpu: 0` / `gpu: 1`) on its own GPU. On the CPU the same
split gives model parallelism across cores ("columns", `run` with a lane per column): each column
runs on its own thread with the serial twins of the kernels (layers.threads) and
single-threaded BLAS, and a layer that reads the other column waits for its producer.
A net without two balanced columns splits its batch instead ("batch", `run_pair`): each
half goes through its own copy of the layers on its own thread (engine.net). Compared
with intra-op threading ("layers": every kernel split over all cores), such a thread pays
no fork/join per kernel call and its GEMMs are large single-core GEMMs, the shape BLAS
runs best; numba's and OpenBLAS's thread pools never compete for the cores.

"columns" computes what "layers" computes up to float32 rounding (the kernels are the
same code), and every mode is deterministic: the gradients a layer receives from several
readers are summed in one fixed order, whichever thread finishes first.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from layers import threads

MODES = ("auto", "columns", "batch", "layers")
MIN_SPLIT = 8          # "batch" splits batches of at least this many images
ENV = "ENGINE_THREADING"

_pool = None
_pool_lock = threading.Lock()
_blas = None


class _Aborted(Exception):
    """The other lane failed; this one stops at its next wait."""


def _forget_pool():
    global _pool
    _pool = None      # a forked child has no copy of the worker threads


os.register_at_fork(after_in_child=_forget_pool)


def _worker_pool():
    global _pool
    with _pool_lock:
        if _pool is None:      # up to 7 helpers: a net has at most 8 columns (gpu: 0..7)
            _pool = ThreadPoolExecutor(max_workers=7, thread_name_prefix="engine-column")
        return _pool


def blas_threads(n):
    """numpy's BLAS limited to n threads (process-wide) until the returned limit is left as
    a context, or for good when it is only kept."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas.limit(limits=n, user_api="blas")


def latency_mode():
    """Set this process up to run one image at a time, for good (what `predict` does):
    batch-1 forwards split each convolution's filters over the cores on OpenMP's spinning
    workers (layers.threads.set_latency, which says why and when it can pick them), and
    numpy's BLAS stays on one thread, since its idle workers spin too and would take turns
    with OpenMP's on the cores. Call it before the first forward; batches of 8 or more
    still split in halves as they do elsewhere ("batch"), columns run on their own threads.
    Returns the Numba threading layer in use. `single_images()` is the same for a block."""
    blas_threads(1)
    return threads.set_latency(True)


@contextlib.contextmanager
def single_images():
    """latency_mode() within the block only: afterwards BLAS's threads and threads.latency()
    are as they were (the threading layer, once picked, stays)."""
    before = threads.latency()
    with blas_threads(1):
        threads.set_latency(True)
        try:
            yield
        finally:
            threads.set_latency(before, spin=False)


def _one_blas_thread():
    """A context in which numpy's BLAS runs on the calling thread only."""
    return blas_threads(1)


@contextlib.contextmanager
def single_core():
    """On this thread: the serial kernels and one BLAS thread, as a column thread runs
    (for one thread only: the BLAS limit is process-wide)."""
    with threads.serial(), _one_blas_thread():
        yield


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"threading must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def column_work(nodes):
    """{column: multiply-adds} over the layers of each column."""
    work = {}
    for node in nodes:
        work[node.gpu] = work.get(node.gpu, 0) + node.layer.macs()
    return work


def needs_whole_batch(layer):
    """True for a layer that must see a training batch whole: its forward uses the batch's
    statistics (Layer.whole_batch) or it updates state (one update per step, not per half)."""
    return bool(layer.whole_batch or layer.state_shapes())


def splits(layer):
    """True for a layer that can run as two halves of a batch: it needs nothing of the whole
    batch, or what it needs are statistics (Layer.whole_batch), which the halves sum through
    HalfSums (a layer of batch statistics keeps its state from them: the first half updates
    it, from the whole batch's). A layer that updates state without them cannot."""
    return bool(layer.whole_batch or not layer.state_shapes())


class HalfSums:
    """Layer.batch_sum for the two halves of a batch on two threads: each half's call
    copies its values into its slot and blocks until the other's are there (one barrier),
    then both add the two slots in one order (first half's + second's), so both halves
    normalise by the same float64 statistics. Calls alternate between two pairs of slots:
    a half writing its next call's values leaves this call's to the other, and the pair it
    writes two calls on, the other has read before passing the barrier of the call between
    (one barrier a call, not two: a wait costs ~50-100 us of wake-up on this host, and the
    digits ResNet made 27 such calls a step)."""

    def __init__(self):
        self._barrier = threading.Barrier(2)
        self._slots = [[None, None], [None, None]]      # [call parity][half]
        self._calls = [0, 0]

    def part(self, i):
        """The batch_sum of half i (0 or 1)."""
        def batch_sum(values):
            pair = self._slots[self._calls[i] % 2]
            self._calls[i] += 1
            if pair[i] is None or pair[i].shape != values.shape:
                pair[i] = np.empty_like(values)
            np.copyto(pair[i], values)
            self._barrier.wait()
            np.add(pair[0], pair[1], out=values)
        return batch_sum

    def abort(self):
        """The other half failed: a call waiting (or to come) raises BrokenBarrierError."""
        self._barrier.abort()


def usable_cpus():
    """The cores this process may run on: its CPU affinity where the OS keeps one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose(nodes, mode="auto", cpus=None):
    """(mode, why): "columns", "batch" or "layers", and the reason, for a net's nodes.

    auto picks, on two cores or more, columns where the net has at least two columns, no
    more columns than cores, and every column holds at least half its even share of the
    multiply-adds (a quarter for two columns), else batch (each half of a batch on its own
    thread). Measured on this project's 2-core machine (closing note of issue 5):
    intra-op threading ("layers") gained nothing over one core on the CIFAR-10 and LeNet
    nets, while one thread per column or per half-batch scales. The choice is a rule, not
    a timing, so the same net always runs the same way.

    A net's batch normalisation (Layer.whole_batch) splits: the halves sum its statistics
    (HalfSums), so each normalises by the whole batch's, and the first half updates its
    running statistics (resnet-digits, batch 128: 126 vs 178 ms a step on "layers"). A
    net holding a layer that keeps state without them (`splits`) is never split: where
    batch would be picked, or is asked for, it runs "layers", and the reason says which.

    A net whose layers sum statistics over the processes of a data-parallel job
    (Layer.batch_sum) runs "layers" too: columns on threads would reach those collectives
    in an order that differs between the processes."""
    mode = os.environ.get(ENV, mode) if mode == "auto" else mode
    check_mode(mode)
    work = column_work(nodes)
    if mode == "columns" and len(work) < 2:
        return "layers", "the net has one column"
    summing = next((node for node in nodes if node.layer.batch_sum is not None), None)
    if summing is not None and mode != "layers":
        return "layers", (f"layer '{summing.name}' ({summing.type}) sums batch statistics over the "
                          "processes: one layer after another, in one order on every process")
    whole = next((node for node in nodes if not splits(node.layer)), None)
    unsplit = (f"layer '{whole.name}' ({whole.type}) needs the whole batch in one pass (state), "
               "so the batch is not split: one layer after another") if whole is not None else None
    if mode == "batch" and whole is not None:
        return "layers", f"threading: batch was asked for, but {unsplit}"
    if mode != "auto":
        return mode, f"threading: {mode} was asked for"
    if cpus is None:
        cpus = usable_cpus()
    if cpus < 2:
        return "layers", "one CPU core"
    total = max(sum(work.values()), 1)
    halves = f"each half of a batch (of {MIN_SPLIT} or more) on its own thread"
    if any(node.layer.whole_batch for node in nodes):
        halves += ", batch statistics summed over the halves"
    batch = "layers" if whole is not None else "batch"
    halves = unsplit or halves
    if len(work) < 2:
        return batch, f"one column: {halves}"
    if len(work) > cpus:
        return batch, f"{len(work)} columns on {cpus} cores: {halves}"
    smallest = min(work.values()) / total
    if smallest < 0.5 / len(work):
        return batch, f"the smallest column holds {smallest:.0%} of the multiply-adds: {halves}"
    return "columns", f"{len(work)} columns of {', '.join(f'{v / total:.0%}' for v in work.values())} " \
                      f"of the multiply-adds, on {len(work)} threads"


def _at_once(fns):
    """Each of fns at once: the first on this thread, the others on workers, each with the
    serial kernels, the caller's NumPy error state (thread-local in NumPy) and one BLAS
    thread (the BLAS limit is process-wide: set once, around all). Returns the errors, in
    the order of fns, once all have returned."""
    errstate = np.geterr()

    def serially(fn):
        with threads.serial(), np.errstate(**errstate):
            return fn()
    errors = []
    with _one_blas_thread():
        futures = [_worker_pool().submit(serially, fn) for fn in fns[1:]]
        try:
            serially(fns[0])
        except BaseException as e:          # noqa: BLE001  (returned, after the workers)
            errors.append(e)
        for future in futures:
            try:
                future.result()
            except BaseException as e:      # noqa: BLE001
                errors.append(e)
    return errors


def run_pair(first, second):
    """first() and second() at once (see _at_once); the first error is raised, one that
    is only a wait broken by the other's failure (HalfSums.abort) after the rest."""
    errors = _at_once([first, second])
    if errors:
        raise sorted(errors, key=lambda e: isinstance(e, threading.BrokenBarrierError))[0]


def run(order, lane_of, waits_for, work):
    """Call work(node) for every node of `order`, the nodes of each lane (lane_of(node))
    on their own thread in their order; a node first waits until every name in
    waits_for(node) has had its work done.

    One lane runs on the calling thread with the intra-op parallel kernels; several run
    with the serial kernels and one BLAS thread each. The first error (in lane order)
    is raised after every lane has stopped."""
    lanes = {}
    for node in order:
        lanes.setdefault(lane_of(node), []).append(node)
    lanes = [lanes[k] for k in sorted(lanes)]
    if len(lanes) <= 1:           # none: a net of one (cost) layer has no backward to walk
        for node in order:
            work(node)
        return
    done = {node.name: threading.Event() for node in order}
    failed = threading.Event()

    def run_lane(lane):
        try:
            for node in lane:
                for name in waits_for(node):
                    event = done.get(name)
                    if event is not None:
                        event.wait()
                        if failed.is_set():
                            raise _Aborted()
                work(node)
                done[node.name].set()
        except BaseException:
            failed.set()
            for event in done.values():       # wake the other lanes so that they stop
                event.set()
            raise

    errors = _at_once([lambda lane=lane: run_lane(lane) for lane in lanes])
    real = [e for e in errors if not isinstance(e, _Aborted)]
    if real:
        raise real[0]
