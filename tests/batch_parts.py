"""A global batch cut into parts inside one process, as the ranks of a data-parallel job hold it:
each part runs on a thread of its own, one thread at a time, and its layers' `batch_sum`
(Layer.batch_sum) waits for every part's values and gives each part their sum in part
order, as engine.distributed.World.batch_sum does over MPI."""
import itertools
import threading

import numpy as np


class TakingTurns:
    """Parts of a batch on threads that run one at a time: a part runs until its batch_sum,
    which hands the turn over until every part has given its values (so no two parts'
    kernels ever run at once, as the Numba thread pool wants)."""

    def __init__(self, size):
        self.size = size
        self.turn = threading.Lock()
        self.barrier = threading.Barrier(size, timeout=120)
        self.values = [None] * size
        self.calls = [0] * size

    def batch_sum(self, part):
        def batch_sum(values):
            self.values[part] = np.array(values, np.float64)
            self.calls[part] += 1
            self.turn.release()
            try:
                self.barrier.wait()          # every part's values are in
                total = self.values[0].copy()
                for v in self.values[1:]:
                    total += v
                self.barrier.wait()          # every part has read them
            finally:
                self.turn.acquire()
            values[:] = total
        return batch_sum

    def run(self, fns):
        """fns[r]() for each part r, each on its own thread, taking turns; the first error raised."""
        errors = []

        def body(fn):
            with self.turn:
                try:
                    fn()
                except BaseException as e:       # noqa: BLE001  (raised below, on the caller's thread)
                    errors.append(e)
                    self.barrier.abort()
        threads = [threading.Thread(target=body, args=(fn,)) for fn in fns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def bounds(sizes):
    """[(start, stop)] of each part of a batch cut into parts of `sizes` images."""
    return list(itertools.pairwise(np.cumsum([0, *sizes])))


def part_dy(dy, a, b):
    """A part's output gradient from the whole batch's: of the part's own mean loss (what a
    rank's backward gets), i.e. divided by its share of the batch."""
    n = dy.shape[0]
    return dy[a:b] * np.float32(n / (b - a)) if b > a else dy[a:b]
