"""Numba CPU kernels for same-map response normalisation (cuda-convnet's rnorm).

A task is one (image, channel) plane; the tasks are dealt out to WORKERS fixed workers,
each with its own scratch planes (the caller's `scratch`), so no task allocates. The
size x size window sum is separable:
a horizontal pass then a vertical pass, each a loop over the `size` offsets whose inner
loop runs along contiguous memory (2*size additions per element, no subtraction, so no
cancellation). Edges are clipped but the divisor stays size^2, as in cuda-convnet.
"""
import numba
import numpy as np

from layers import threads
from layers.norm_cpu import box_sum, forward_row, grad_row
from layers.threads import WORKERS, worker_tasks


def scratch_shape(h, w):
    """The float32 scratch both kernels take: three planes for each of WORKERS workers."""
    return (WORKERS, 3, h, w)


@threads.kernel
def forward(x, size, alpha, beta, k, mode, y, d, scratch):
    """d = k + alpha/size^2 * (window sum of x^2) ; y = x * d^-beta.

    The window of (y, x) is rows y - size//2 .. y - size//2 + size - 1, same for columns."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    scale = np.float32(alpha / (size * size))
    kf = np.float32(k)
    bf = np.float32(beta)
    for wk in numba.prange(scratch.shape[0]):
        sq, tmp = scratch[wk, 0], scratch[wk, 1]
        t0, t1 = worker_tasks(wk, scratch.shape[0], n * c)
        for p in range(t0, t1):
            i, j = p // c, p % c
            for yy in range(h):
                for xx in range(w):
                    v = x[i, j, yy, xx]
                    sq[yy, xx] = v * v
            dp = d[i, j]
            box_sum(sq, -pre, post, tmp, dp)
            for yy in range(h):
                forward_row(dp[yy], kf, scale, bf, mode, x[i, j, yy], dp[yy], y[i, j, yy])


@threads.kernel
def backward(x, g, d, size, alpha, beta, mode, dx, scratch):
    """dx_i = g_i d_i^-beta - 2 alpha beta/size^2 * x_i * sum_{j: i in window(j)} g_j x_j d_j^(-beta-1).

    The pixels j whose window holds i are offset by -(size-1-size//2) .. size//2: the
    same box sum as forward with mirrored offsets, over t_j = g_j x_j d_j^(-beta-1)."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    coef = np.float32(2.0 * alpha * beta / (size * size))
    bf = np.float32(beta)
    for wk in numba.prange(scratch.shape[0]):
        t, tmp, acc = scratch[wk, 0], scratch[wk, 1], scratch[wk, 2]
        t0, t1 = worker_tasks(wk, scratch.shape[0], n * c)
        for p in range(t0, t1):
            i, j = p // c, p % c
            for yy in range(h):
                grad_row(bf, mode, x[i, j, yy], g[i, j, yy], d[i, j, yy], t[yy], dx[i, j, yy])
            box_sum(t, -post, pre, tmp, acc)
            for yy in range(h):
                for xx in range(w):
                    dx[i, j, yy, xx] -= coef * x[i, j, yy, xx] * acc[yy, xx]
