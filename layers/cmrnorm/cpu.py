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

d^-beta is the costly part. beta = 0.75 (AlexNet, cuda-convnet), 0.5 and 1 use square
roots / a division instead of pow. The case is a constant in each of the four calls of
the inlined row helpers below (`pow_neg` folds to one expression), so the branch sits
outside the loop over the row and the loop vectorises. rnorm shares these helpers.
Divisions are np.divide: the serial twins check `/` for ZeroDivisionError (Python's error
model), and that branch keeps a loop from vectorising (d > 0 here, so nothing changes).
"""
import numba
import numpy as np

from layers import threads


def beta_mode(beta):
    """The special case of d^-beta the kernels use: 1: 0.75, 2: 0.5, 3: 1, 0: general pow."""
    return {0.75: 1, 0.5: 2, 1.0: 3}.get(float(beta), 0)


@numba.njit(inline="always")
def pow_neg(d, beta, mode):
    """d ** -beta for float32 d > 0."""
    if mode == 1:
        r = np.divide(np.float32(1.0), np.sqrt(d))
        return r * np.sqrt(r)
    if mode == 2:
        return np.divide(np.float32(1.0), np.sqrt(d))
    if mode == 3:
        return np.divide(np.float32(1.0), d)
    return d ** -beta


@numba.njit(inline="always")
def _forward_row(s, kf, scale, bf, mode, xr, dr, yr):
    for xx in range(xr.shape[0]):
        dd = kf + scale * np.float32(s[xx])
        dr[xx] = dd
        yr[xx] = xr[xx] * pow_neg(dd, bf, mode)


@numba.njit(inline="always")
def forward_row(s, kf, scale, bf, mode, xr, dr, yr):
    """One row: d = k + scale * s (the window sums); y = x * d^-beta."""
    if mode == 1:
        _forward_row(s, kf, scale, bf, 1, xr, dr, yr)
    elif mode == 2:
        _forward_row(s, kf, scale, bf, 2, xr, dr, yr)
    elif mode == 3:
        _forward_row(s, kf, scale, bf, 3, xr, dr, yr)
    else:
        _forward_row(s, kf, scale, bf, 0, xr, dr, yr)


@numba.njit(inline="always")
def _grad_row(bf, mode, xr, gr, dr, tr, dxr):
    for xx in range(xr.shape[0]):
        dd = dr[xx]
        gp = gr[xx] * pow_neg(dd, bf, mode)
        tr[xx] = np.divide(gp * xr[xx], dd)
        dxr[xx] = gp


@numba.njit(inline="always")
def grad_row(bf, mode, xr, gr, dr, tr, dxr):
    """One row: dx = g d^-beta (the direct term); t = g x d^(-beta-1) (what the windows sum)."""
    if mode == 1:
        _grad_row(bf, 1, xr, gr, dr, tr, dxr)
    elif mode == 2:
        _grad_row(bf, 2, xr, gr, dr, tr, dxr)
    elif mode == 3:
        _grad_row(bf, 3, xr, gr, dr, tr, dxr)
    else:
        _grad_row(bf, 0, xr, gr, dr, tr, dxr)


CHUNK = 512        # pixels per task at most: a batch of one still spreads over threads
WORKERS = 32       # scratch rows; the parallel loop runs over these


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
def worker_tasks(wk, workers, total):
    """Worker wk's contiguous run [t0, t1) of tasks 0 .. total-1 (pool shares it)."""
    return wk * total // workers, (wk + 1) * total // workers


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
