"""CPU helpers shared by the response normalisations (cmrnorm, rnorm, cnorm): the row
kernels d = k + scale * s, y = x d^-beta and their gradient, and rnorm's separable box sum.

d^-beta is the costly part. beta = 0.75 (AlexNet, cuda-convnet), 0.5 and 1 use square
roots / a division instead of pow. The case is a constant in each of the four calls of
the inlined row helpers below (`pow_neg` folds to one expression), so the branch sits
outside the loop over the row and the loop vectorises. Divisions are np.divide: the
serial twins check `/` for ZeroDivisionError (Python's error model), and that branch
keeps a loop from vectorising (d > 0 here, so nothing changes).
"""
import numba
import numpy as np


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


@numba.njit(inline="always")
def box_sum(src, lo, hi, tmp, out):
    """out[y, x] = sum of src[y + a, x + b] for a, b in [lo, hi], clipped to the plane."""
    h, w = src.shape
    for yy in range(h):
        for xx in range(w):
            tmp[yy, xx] = 0.0
    for o in range(lo, hi + 1):                        # horizontal pass
        x0, x1 = max(0, -o), min(w, w - o)
        for yy in range(h):
            for xx in range(x0, x1):
                tmp[yy, xx] += src[yy, xx + o]
    for yy in range(h):                                # vertical pass
        for xx in range(w):
            out[yy, xx] = 0.0
        for o in range(lo, hi + 1):
            r = yy + o
            if 0 <= r < h:
                for xx in range(w):
                    out[yy, xx] += tmp[r, xx]
