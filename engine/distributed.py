"""Data-parallel training over MPI ranks (mpi4py): launch detection, the batch split, the exchange.

Under `mpirun -n N python -m engine train ...` (N > 1) every rank holds the whole net; the
global batch of the single-process order is cut into N contiguous slices, rank r takes
slice r, and the gradients of the per-rank losses, each scaled by its share of the batch
(n_r / n), are summed over the ranks: every rank then applies the single-process update
of the whole batch. Without an MPI launcher nothing here imports mpi4py.

The exchange: the gradients are copied, in reverse layer order (the order backward makes
them), into a few flat float32 buckets of about `bucket_mb` MB (PyTorch DDP's 25 MB); each
bucket's in-place `Iallreduce` starts as soon as its last gradient is in, while backward goes
on (Executor.on_grads), and the update waits for all.
"""
import contextlib
import os
import sys
import threading
import time
import traceback

import numpy as np

DEFAULT_BUCKET_MB = 25.0
# what each launcher puts in a rank's environment: the job's rank count
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("PMIX_RANK", "PMI_RANK")     # a launcher that may give no size (srun --mpi=pmix)
INSTALL = "pip install -e '.[mpi]' (mpi4py and the Open MPI wheel)"
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")     # the user's choice wins


class LaunchError(RuntimeError):
    """Started by an MPI launcher, but the job cannot run (a one-line message for the user)."""


def launched_size(environ=None):
    """The rank count an MPI launcher gave this process (1 without a launcher; None when a
    launcher is there but says no count), from the environment alone: no mpi4py import."""
    env = os.environ if environ is None else environ
    for var in SIZE_VARS:
        if env.get(var, "").strip().isdigit():
            return int(env[var])
    return None if any(var in env for var in RANK_VARS) else 1


def from_environment(bucket_mb=DEFAULT_BUCKET_MB):
    """The World of an MPI job of more than one rank, else None (mpi4py stays unimported).

    LaunchError, naming what to install, when a launcher started N > 1 ranks and mpi4py is
    missing."""
    size = launched_size()
    if size == 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        ranks = f"{size} ranks" if size else "an MPI launcher"
        raise LaunchError(f"started under mpirun ({ranks}) but mpi4py is not installed: {INSTALL}") from None
    if MPI.COMM_WORLD.Get_size() == 1:
        return None
    return World(MPI.COMM_WORLD, MPI, bucket_mb)


def cores_per_rank(local_size):
    """The cores one rank may use: its CPU affinity where the launcher bound it to fewer than
    the machine's cores, else the machine's cores shared by the ranks on it."""
    cores = os.cpu_count() or 1
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return bound if bound < cores else max(1, cores // max(local_size, 1))


class World:
    """This rank's view of the job: rank, size, the ranks on its machine, and the few
    collectives training needs."""

    def __init__(self, comm, mpi, bucket_mb=DEFAULT_BUCKET_MB):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        if not bucket_mb > 0:
            raise ValueError(f"the bucket size must be > 0 MB, got {bucket_mb!r}")
        self.bucket_bytes = int(bucket_mb * (1 << 20))
        self.cores = cores_per_rank(self.local_size)
        # batch statistics (Layer.batch_sum) on a communicator of their own: their blocking
        # collectives never queue among the gradient buckets' Iallreduce on `comm`
        self.stats_comm = comm.Dup()
        self._every = {}       # k -> float64 [size, k], batch_sum's receive buffer

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def part(self):
        """(rank, size): which contiguous slice of every global batch this rank takes."""
        return self.rank, self.size

    def share_threads(self):
        """Give this rank its share of the machine's cores: Numba's threads and the BLAS's,
        unless the user set NUMBA_NUM_THREADS (or one of BLAS_VARS); returns the share. On
        one core the rank runs one layer after another (unless ENGINE_THREADING says
        otherwise) with the serial kernels (see `threads`). Ranks whose BLAS each start a
        thread per core of the machine oversubscribe it (measured on 2 cores: lenet5 on 2
        ranks trained at 914 img/s so, at 4,240 with one BLAS thread per rank)."""
        self.cores = cores_per_rank(self.local_size)
        if "NUMBA_NUM_THREADS" not in os.environ:
            import numba
            numba.set_num_threads(max(1, min(self.cores, numba.config.NUMBA_NUM_THREADS)))
        if not any(var in os.environ for var in BLAS_VARS):
            from engine import columns
            self._blas_limits = columns.blas_threads(self.cores)     # kept: for the run
        if self.cores < 2:
            os.environ.setdefault("ENGINE_THREADING", "layers")
        return self.cores

    def kernels(self):
        """The context training runs in: the serial kernels on a rank of one core (no
        fork/join of a parallel region with nobody to join), else the usual ones."""
        from layers import threads
        return threads.serial() if self.cores < 2 else contextlib.nullcontext()

    def select_gpu(self):
        """On CUDA: this rank takes GPU local_rank % (GPUs of its machine)."""
        from numba import cuda
        cuda.select_device(self.local_rank % max(len(cuda.gpus), 1))

    # ---- small collectives ------------------------------------------------------
    def counts(self, n):
        """(offset, total): where this rank's n images start in the global batch, and its size."""
        every = np.zeros(self.size, np.int64)
        self.comm.Allgather(np.array([n], np.int64), every)
        return int(every[:self.rank].sum()), int(every.sum())

    def gather(self, values):
        """float64 [size, k]: every rank's `values` (k floats), rank order."""
        mine = np.asarray(values, np.float64).reshape(-1)
        every = np.zeros((self.size, mine.size), np.float64)
        self.comm.Allgather(mine, every)
        return every

    def sum(self, values):
        """The sum over ranks of `values` (float64), in rank order on every rank."""
        return self.gather(values).sum(axis=0)

    def batch_sum(self, values):
        """Sum the float64 array `values` in place over the ranks (Layer.batch_sum: a whole_batch
        layer's statistics of the global batch). The ranks' parts are added in rank order, so
        every rank gets the same bits (an allreduce's order may differ between ranks)."""
        k = values.size
        every = self._every.get(k)
        if every is None:
            every = self._every[k] = np.empty((self.size, k), np.float64)
        self.stats_comm.Allgather(np.ascontiguousarray(values, np.float64), every)
        np.sum(every, axis=0, out=values)

    def agree_stop(self, signum):
        """The stop request of any rank (the highest signal number; None if none): every rank
        stops after the same step."""
        top = int(self.gather([signum or 0]).max())
        return top or None

    def bcast(self, obj):
        """Rank 0's `obj` on every rank (pickled; checkpoints, the mean image)."""
        return self.comm.bcast(obj, root=0)

    # ---- faults -----------------------------------------------------------------
    def abort(self, message, code):
        """Print `message` naming this rank, then end the whole job (MPI_Abort): the other
        ranks are not left waiting in a collective. Rank 0 speaks first; the others wait a
        moment, so an error every rank meets (a bad net file) is printed once."""
        if not self.is_root:
            time.sleep(0.5)
        print(f"error (rank {self.rank} of {self.size}): {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)


def guarded(world, fn, errors):
    """Run fn(); an exception escaping it on any rank aborts the job with that rank's message.

    errors: [(exception types, exit code)] for errors the user can act on (printed as one
    line); anything else is a bug: its traceback, then exit 1."""
    try:
        return fn()
    except BaseException as e:          # SystemExit, KeyboardInterrupt too: nobody may hang
        if isinstance(e, SystemExit) and not e.code:
            raise
        for types, code in errors:
            if isinstance(e, types):
                world.abort(str(e) or type(e).__name__, code)
        if isinstance(e, KeyboardInterrupt):
            world.abort("interrupted", 130)
        traceback.print_exc()
        world.abort(f"{type(e).__name__}: {e}", 1)


class GradientExchange:
    """The sum over ranks of every rank's gradients, each scaled by its share of the batch.

    Flat float32 buckets hold the gradients in reverse layer order, ~world.bucket_bytes
    each (a tensor larger than that gets a bucket of its own); their views are the summed
    gradients handed to the optimizer (copied to the device on CUDA).

    A step: `start(share)`, then `add(layer, grads)` as backward makes each layer's gradients
    (Executor.on_grads: from the lanes' threads), then `finish(grads)`. A bucket's Iallreduce
    starts once every gradient in it has come and every earlier bucket has started: the
    buckets start in one order on every rank, whichever lane finished first. On CUDA the
    gradients stay on the device until `finish` (a copy to the host mid-backward would stall
    the stream)."""

    def __init__(self, world, shapes, backend):
        """shapes: {"<layer>.<param>": shape} in layer order."""
        self.world, self.backend = world, backend
        self.buckets, entries, size = [], [], 0
        for key in reversed(list(shapes)):
            n = int(np.prod(shapes[key], dtype=np.int64))
            if entries and (size + n) * 4 > world.bucket_bytes:
                self.buckets.append((np.zeros(size, np.float32), entries))
                entries, size = [], 0
            entries.append((key, size, n))
            size += n
        if entries:
            self.buckets.append((np.zeros(size, np.float32), entries))
        self.slot = {key: (b, flat[a:a + n]) for b, (flat, es) in enumerate(self.buckets) for key, a, n in es}
        self.summed = {key: self.slot[key][1].reshape(shapes[key]) for key in shapes}   # layer order
        self.on_host = backend.kind == "cpu"
        self.device = None if self.on_host else {k: backend.zeros(v.shape) for k, v in self.summed.items()}
        self.any_thread = None      # whether lanes' threads may call MPI (asked at the first step)
        self.lock = threading.Lock()
        self.share = None           # None: no step under way, `add` ignores its calls

    @property
    def nbytes(self):
        return sum(flat.nbytes for flat, _ in self.buckets)

    def start(self, share):
        """A step begins: this rank's gradients will count `share` (n_r / n) of the sum."""
        if self.any_thread is None:
            # posting from a lane's thread needs an MPI that allows calls from any thread (one
            # at a time: under the lock); else the main thread posts what is ready when it can
            mpi = self.world.MPI
            self.any_thread = mpi.Query_thread() >= mpi.THREAD_SERIALIZED
        self.share = np.float32(share)
        self.received = set()
        self.missing = [len(entries) for _, entries in self.buckets]
        self.posted, self.requests = 0, []

    def add(self, layer, grads):
        """Executor.on_grads: {param: gradient} of `layer`, final; its buckets start when full."""
        if self.share is None or not self.on_host:
            return
        keys = [(f"{layer}.{p}", g) for p, g in grads.items()]
        keys = [(k, g) for k, g in keys if k in self.slot and k not in self.received]
        for key, g in keys:                     # each key its own slot: no lock needed
            np.multiply(np.asarray(g).reshape(-1), self.share, out=self.slot[key][1])
        with self.lock:
            for key, _ in keys:
                self.received.add(key)
                self.missing[self.slot[key][0]] -= 1
            if self.any_thread or threading.current_thread() is threading.main_thread():
                self._post_ready()
                if self.requests:                # drive the started ones on (no progress thread)
                    self.world.MPI.Request.Testall(self.requests)

    def finish(self, grads):
        """{key: sum over ranks of share_r * grads_r[key]} once every bucket is summed; grads
        None (an empty share of the batch) counts as zeros. Gradients `add` did not get are
        copied in first."""
        for key, (b, dst) in self.slot.items():
            if key in self.received:
                continue
            if grads is None:
                dst[:] = 0.0
            else:
                g = grads[key]
                g = g if isinstance(g, np.ndarray) else self.backend.to_host(g)
                np.multiply(g.reshape(-1), self.share, out=dst)
        with self.lock:
            self.missing = [0] * len(self.buckets)
            self._post_ready()
            self.world.MPI.Request.Waitall(self.requests)
            self.share = None
        if self.on_host:
            return self.summed
        for key, host in self.summed.items():
            self.device[key].copy_to_device(host)
        return self.device

    def _post_ready(self):
        """Start, in bucket order, each bucket whose gradients are all in (under the lock)."""
        mpi, comm = self.world.MPI, self.world.comm
        while self.posted < len(self.buckets) and self.missing[self.posted] == 0:
            flat = self.buckets[self.posted][0]
            self.requests.append(comm.Iallreduce(mpi.IN_PLACE, flat, op=mpi.SUM))
            self.posted += 1
