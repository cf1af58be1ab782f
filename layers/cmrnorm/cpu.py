"""Numba CPU kernels for cross-map response normalisation.

One parallel task per (image, row); the window sum over maps is a running sum kept per
pixel of the row (a length-W float64 accumulator: add the map entering the window,
subtract the one leaving), so the cost per element does not grow with `size`. float64
keeps the subtraction from drifting or going negative when k is small.

d^-beta is the costly part. beta = 0.75 (AlexNet, cuda-convnet), 0.5 and 1 use square
roots / a division instead of pow. The case is a constant in each of the four calls of
the inlined row helpers below (`pow_neg` folds to one expression), so the branch sits
outside the loop over the row and the loop vectorises. rnorm shares these helpers.
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
        r = np.float32(1.0) / np.sqrt(d)
        return r * np.sqrt(r)
    if mode == 2:
        return np.float32(1.0) / np.sqrt(d)
    if mode == 3:
        return np.float32(1.0) / d
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
        tr[xx] = gp * xr[xx] / dd
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


@threads.kernel
def forward(x, size, alpha, beta, k, mode, y, d):
    """d = k + alpha/size * sum_{window(c)} x^2 ; y = x * d^-beta.

    window(c) = maps c - size//2 .. c - size//2 + size - 1, clipped to [0, C)."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    scale = np.float32(alpha / size)
    kf = np.float32(k)
    bf = np.float32(beta)
    for r in numba.prange(n * h):
        i, row = r // h, r % h
        acc = np.zeros(w, np.float64)
        for m in range(min(post, c - 1) + 1):          # window of map 0: maps 0 .. post
            for xx in range(w):
                v = np.float64(x[i, m, row, xx])
                acc[xx] += v * v
        for m in range(c):
            if m > 0:
                enter = m + post
                if enter < c:
                    for xx in range(w):
                        v = np.float64(x[i, enter, row, xx])
                        acc[xx] += v * v
                leave = m - pre - 1
                if leave >= 0:
                    for xx in range(w):
                        v = np.float64(x[i, leave, row, xx])
                        acc[xx] -= v * v
            forward_row(acc, kf, scale, bf, mode, x[i, m, row], d[i, m, row], y[i, m, row])


@threads.kernel
def backward(x, g, d, size, alpha, beta, mode, dx):
    """dx_i = g_i d_i^-beta - 2 alpha beta/size * x_i * sum_{j: i in window(j)} g_j x_j d_j^(-beta-1).

    The maps j whose window holds i are i - (size-1-size//2) .. i + size//2: the same
    running sum as forward with the offsets mirrored, over t_j = g_j x_j d_j^(-beta-1)."""
    n, c, h, w = x.shape
    pre = size // 2
    post = size - 1 - pre
    coef = np.float32(2.0 * alpha * beta / size)
    bf = np.float32(beta)
    for r in numba.prange(n * h):
        i, row = r // h, r % h
        t = np.empty((c, w), np.float32)
        acc = np.zeros(w, np.float64)
        for m in range(c):
            grad_row(bf, mode, x[i, m, row], g[i, m, row], d[i, m, row], t[m], dx[i, m, row])
        for m in range(min(pre, c - 1) + 1):           # maps whose window holds map 0
            for xx in range(w):
                acc[xx] += t[m, xx]
        for m in range(c):
            if m > 0:
                enter = m + pre
                if enter < c:
                    for xx in range(w):
                        acc[xx] += t[enter, xx]
                leave = m - post - 1
                if leave >= 0:
                    for xx in range(w):
                        acc[xx] -= t[leave, xx]
            for xx in range(w):
                dx[i, m, row, xx] -= coef * x[i, m, row, xx] * np.float32(acc[xx])
