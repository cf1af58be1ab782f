"""Numba CPU kernels for the locally connected layer: im2col per location, bias+activation
scatter, gradient gather, col2im.

The products (one small GEMM per location and group) run in numpy's BLAS outside these
kernels, as conv's. Column layout: cols[p, c*k*k + ky*k + kx, n] for output location
p = oy*OW + ox, so location p's columns are one contiguous [C*k*k, N] block whose
group g is the row block g*(C/groups)*k*k .. : cols.reshape(P, groups, Kg, N) is the
batched right operand, and the weight [P, F, C/groups, k, k] reshaped to
[P, groups, F/groups, Kg] the left one. tmp / dtmp are [P, F, N].
"""
import numba
import numpy as np

from layers import threads
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised



@threads.kernel
def im2col(x, k, stride, padding, oh, ow, cols):
    """cols[p, c*k*k + ky*k + kx, n] = x[n, c, oy*stride - padding + ky, ox*stride - padding + kx],
    zero outside the image (the padding, and any padding_end); one task per output location."""
    n_img, c_in, h, w = x.shape
    kk = k * k
    zero = np.float32(0.0)
    for p in numba.prange(oh * ow):
        oy, ox = p // ow, p % ow
        for c in range(c_in):
            for ky in range(k):
                iy = oy * stride - padding + ky
                for kx in range(k):
                    ix = ox * stride - padding + kx
                    r = c * kk + ky * k + kx
                    if 0 <= iy < h and 0 <= ix < w:
                        for n in range(n_img):
                            cols[p, r, n] = x[n, c, iy, ix]
                    else:
                        for n in range(n_img):
                            cols[p, r, n] = zero


@numba.njit(inline="always")
def _bias_act_filter(code, args):
    tmp, bias, pa, pb, keep, y, pre, f = args
    for p in range(y.shape[2]):
        b = bias[f, p]
        for n in range(y.shape[0]):
            a = tmp[p, f, n] + b
            if keep:
                pre[n, f, p] = a
            y[n, f, p] = activate(code, pa, pb, a)


@activation_kernel(split="forward")
def bias_act(tmp, bias, code, pa, pb, keep, y, pre):
    """y[n, f, p] = f(tmp[p, f, n] + bias[f, p]) for the activation (code, pa, pb); with
    `keep`, pre keeps the sum too. One task per filter."""
    for f in numba.prange(y.shape[1]):
        specialised(code, _bias_act_filter, (tmp, bias, pa, pb, keep, y, pre, f))


@numba.njit(inline="always")
def _grad_filter(code, args):
    dy, y, pre, pa, pb, dtmp, db, f = args
    for p in range(dy.shape[2]):
        acc = 0.0
        for n in range(dy.shape[0]):
            g = activate_grad(code, pa, pb, dy[n, f, p], y[n, f, p], pre[n, f, p])
            dtmp[p, f, n] = g
            acc += g
        db[f, p] = acc


@activation_kernel(split="backward", grad="dy")
def grad_gather(dy, y, pre, code, pa, pb, dtmp, db):
    """dtmp[p, f, n] = dL/d(pre-activation); db[f, p] = its sum over the batch (float64).
    One task per filter."""
    for f in numba.prange(dy.shape[1]):
        specialised(code, _grad_filter, (dy, y, pre, pa, pb, dtmp, db, f))


@threads.kernel
def col2im(dcols, k, stride, padding, oh, ow, dx):
    """dx <- the sum of dcols over every (location, offset) that read each pixel.

    One task per (image, channel) owns that dx plane, so += never races."""
    n_img, c_in, h, w = dx.shape
    kk = k * k
    zero = np.float32(0.0)
    for i in numba.prange(n_img * c_in):
        n, c = i // c_in, i % c_in
        for iy in range(h):
            for ix in range(w):
                dx[n, c, iy, ix] = zero
        for p in range(oh * ow):
            oy, ox = p // ow, p % ow
            for ky in range(k):
                iy = oy * stride - padding + ky
                if iy < 0 or iy >= h:
                    continue
                for kx in range(k):
                    ix = ox * stride - padding + kx
                    if 0 <= ix < w:
                        dx[n, c, iy, ix] += dcols[p, c * kk + ky * k + kx, n]
