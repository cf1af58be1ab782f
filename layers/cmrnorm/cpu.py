"""Numba CPU kernels for cross-map response normalisation.

The kernels see each image as a [C, H*W] slab. A task is one image's pixels p0..p1 (a
chunk of at most CHUNK pixels); the window sum over maps is a running sum kept per pixel
of the chunk (add the map entering the window, subtract the one leaving), so the cost
per element does not grow with `size` and every inner loop runs along contiguous pixels
and vectorises. The running sum is float64: float32 squares are exact there, and float64
keeps the subtraction from drifting or going negative when k is small.

No task allocates: the tasks are dealt out to WORKERS fixed workers (the parallel loop
runs over workers, each taking a contiguous run of tasks), and each worker has its rows
of the caller's scratch (`scratch_shapes`): the float64 running sum and, in backward, a
ring of the last `size` maps' window terms. The scratch does not depend on the batch.

The row helpers (d^-beta and its gradient) are layers/norm_cpu.py's, shared with rnorm
and cnorm.
"""
import numba
import numpy as np

from layers import threads
from layers.norm_cpu import forward_row, grad_row
from layers.threads import WORKERS, worker_tasks


CHUNK = 512        # pixels per task at most: a batch of one still spreads over threads



def chunk(hw):
    """Pixels per task for planes of hw pixels: hw split evenly into pieces <= CHUNK."""
    pieces = -(-hw // CHUNK)
    return -(-hw // pieces)


def scratch_shapes(hw, size):
    """Float32 shapes of the two scratch arrays: the float64 running sums [WORKERS, chunk]
    (as float32 pairs) and backward's ring of window terms [WORKERS, size, chunk]."""
    ch = chunk(hw)
    return (WORKERS, 2 * ch), (WORKERS, size, ch)


@numba.njit(inline="always")
def _tasks(wk, workers, n, hw, ch):
    """Worker wk's run of tasks [t0, t1); a task is (image, pixel chunk)."""
    per = (hw + ch - 1) // ch
    t0, t1 = worker_tasks(wk, workers, n * per)
    return t0, t1, per


@numba.njit(inline="always")
def _add_squares(acc, xr, sign):
    for p in range(xr.shape[0]):
        v = np.float64(xr[p])
        acc[p] += sign * (v * v)


@threads.kernel
def forward(x, size, alpha, beta, k, mode, y, d, acc):
    """d = k + alpha/size * sum_{window(c)} x^2 ; y = x * d^-beta. x, y, d: [N, C, H*W];
    acc: float64 [WORKERS, chunk] scratch.

    window(c) = maps c - size//2 .. c - size//2 + size - 1, clipped to [0, C)."""
    n, c, hw = x.shape
    workers, ch = acc.shape
    pre = size // 2
    post = size - 1 - pre
    scale = np.float32(alpha / size)
    kf = np.float32(k)
    bf = np.float32(beta)
    for wk in numba.prange(workers):
        t0, t1, per = _tasks(wk, workers, n, hw, ch)
        a = acc[wk]
        for task in range(t0, t1):
            i = task // per
            p0 = (task % per) * ch
            p1 = min(hw, p0 + ch)
            for p in range(p1 - p0):
                a[p] = 0.0
            for m in range(min(post, c - 1) + 1):      # window of map 0: maps 0 .. post
                _add_squares(a, x[i, m, p0:p1], 1.0)
            for m in range(c):
                if m > 0:
                    if m + post < c:
                        _add_squares(a, x[i, m + post, p0:p1], 1.0)
                    if m - pre - 1 >= 0:
                        _add_squares(a, x[i, m - pre - 1, p0:p1], -1.0)
                forward_row(a, kf, scale, bf, mode, x[i, m, p0:p1], d[i, m, p0:p1], y[i, m, p0:p1])


@threads.kernel
def backward(x, g, d, size, alpha, beta, mode, dx, acc, ring):
    """dx_i = g_i d_i^-beta - 2 alpha beta/size * x_i * sum_{j: i in window(j)} g_j x_j d_j^(-beta-1).

    The maps j whose window holds i are i - (size-1-size//2) .. i + size//2: the same
    running sum as forward with the offsets mirrored, over t_j = g_j x_j d_j^(-beta-1).
    Step j computes t_j (into ring row j % size, the slot t_{j-size} leaves) and dx_j's
    direct term, and finishes dx_{j - size//2}, whose sum then holds t up to j.
    acc: float64 [WORKERS, chunk], ring: [WORKERS, size, chunk] scratch."""
    n, c, hw = x.shape
    workers, ch = acc.shape
    pre = size // 2
    post = size - 1 - pre
    coef = np.float32(2.0 * alpha * beta / size)
    bf = np.float32(beta)
    for wk in numba.prange(workers):
        t0, t1, per = _tasks(wk, workers, n, hw, ch)
        a = acc[wk]
        for task in range(t0, t1):
            i = task // per
            p0 = (task % per) * ch
            p1 = min(hw, p0 + ch)
            for p in range(p1 - p0):
                a[p] = 0.0
            for j in range(c + pre):
                slot = ring[wk, j % size, :p1 - p0]
                if j >= size:                           # t_{j-size} leaves (it sits in slot)
                    for p in range(p1 - p0):
                        a[p] -= np.float64(slot[p])
                if j < c:
                    grad_row(bf, mode, x[i, j, p0:p1], g[i, j, p0:p1], d[i, j, p0:p1], slot,
                             dx[i, j, p0:p1])
                    for p in range(p1 - p0):
                        a[p] += np.float64(slot[p])
                m = j - pre
                if m >= 0:
                    xr, dxr = x[i, m, p0:p1], dx[i, m, p0:p1]
                    for p in range(p1 - p0):
                        dxr[p] -= coef * xr[p] * np.float32(a[p])
