"""Numba CPU kernels for same-map contrast normalisation (cuda-convnet's cnorm).

One parallel task per (image, channel) plane, as rnorm: every window sum is rnorm's
separable clipped box sum. Forward: the window means give u = x - mean (kept for
backward), the window sums of u^2 give d, and y = x d^-beta (cmrnorm's row helper).
Backward runs the chain of layers/cnorm/reference.py: t = g x d^(-beta-1), its mirrored
window sums give v = dL/du, and the mirrored window sums of v / |window| carry the
gradient back through the means.
"""
import numba
import numpy as np

from layers import threads
from layers.norm_cpu import box_sum, forward_row, grad_row


@numba.njit(inline="always")
def _count(p, pre, post, extent):
    """How many of the window's rows (or columns) around p lie inside [0, extent)."""
    return min(extent - 1, p + post) - max(0, p - pre) + 1


@threads.kernel
def forward(x, size, alpha, beta, k, mode, u, y, d):
    """u = x - window mean of x; d = k + alpha/size^2 * (window sum of u^2); y = x * d^-beta."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    scale = np.float32(alpha / (size * size))
    kf = np.float32(k)
    bf = np.float32(beta)
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        xp, up, dp = x[i, j], u[i, j], d[i, j]
        tmp = np.empty((h, w), np.float32)
        sums = np.empty((h, w), np.float32)
        box_sum(xp, -pre, post, tmp, sums)
        for yy in range(h):
            rows = _count(yy, pre, post, h)
            for xx in range(w):
                v = xp[yy, xx] - np.divide(sums[yy, xx], np.float32(rows * _count(xx, pre, post, w)))
                up[yy, xx] = v
                sums[yy, xx] = v * v
        box_sum(sums, -pre, post, tmp, dp)
        for yy in range(h):
            forward_row(dp[yy], kf, scale, bf, mode, xp[yy], dp[yy], y[i, j, yy])


@threads.kernel
def backward(x, g, u, d, size, alpha, beta, mode, dx):
    """dx_r = g_r d_r^-beta + v_r - sum_{q: r in window(q)} v_q / |window(q)|, with
    v_q = -2 alpha beta/size^2 * u_q * sum_{p: q in window(p)} g_p x_p d_p^(-beta-1)."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    coef = np.float32(2.0 * alpha * beta / (size * size))
    bf = np.float32(beta)
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        up, dxp = u[i, j], dx[i, j]
        t = np.empty((h, w), np.float32)
        tmp = np.empty((h, w), np.float32)
        acc = np.empty((h, w), np.float32)
        for yy in range(h):
            grad_row(bf, mode, x[i, j, yy], g[i, j, yy], d[i, j, yy], t[yy], dxp[yy])
        box_sum(t, -post, pre, tmp, acc)
        for yy in range(h):
            rows = _count(yy, pre, post, h)
            for xx in range(w):
                v = -coef * up[yy, xx] * acc[yy, xx]
                dxp[yy, xx] += v
                t[yy, xx] = np.divide(v, np.float32(rows * _count(xx, pre, post, w)))
        box_sum(t, -post, pre, tmp, acc)
        for yy in range(h):
            for xx in range(w):
                dxp[yy, xx] -= acc[yy, xx]
