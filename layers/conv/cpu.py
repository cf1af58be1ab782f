"""Numba CPU kernels for conv: im2col, bias+activation scatter, gradient gather, col2im.

The GEMMs run in numpy's BLAS outside these kernels (measured faster than np.dot
inside njit, and it avoids calling BLAS from inside prange).
Column layout: cols[c*k*k + ky*k + kx, n*P + oy*OW + ox] with P = OH*OW, so a
group's rows are one contiguous block and each image's columns are one segment.
"""
import numba
import numpy as np

from layers import threads
from layers.neuron.cpu import activate, activate_grad, specialised



@numba.njit(inline="always")
def _valid(o_count, size, k_off, stride, padding):
    """[lo, hi): the outputs whose input index o*stride - padding + k_off lies in [0, size)."""
    lo = max(0, -((k_off - padding) // stride))          # ceil((padding - k_off) / stride)
    hi = min(o_count, (size - 1 + padding - k_off) // stride + 1)
    return lo, max(lo, hi)


@threads.kernel
def im2col(x, k, stride, padding, oh, ow, cols):
    """cols <- the k*k-shifted, strided copies of x [N, C, H, W]; zeros where padding.

    The copies go through views (a row of x, a segment of cols): indices from 0 with a
    unit or known stride, so the loops vectorise without negative-index checks."""
    n_img, c_in, h, w = x.shape
    p_out = oh * ow
    kk = k * k
    zero = np.float32(0.0)
    for r in numba.prange(c_in * kk):
        c, ky, kx = r // kk, (r // k) % k, r % k
        ox0, ox1 = _valid(ow, w, kx, stride, padding)
        oy0, oy1 = _valid(oh, h, ky, stride, padding)
        ix0 = ox0 * stride - padding + kx
        ix1 = ix0 + (ox1 - ox0 - 1) * stride + 1
        for n in range(n_img):
            plane = cols[r, n * p_out:(n + 1) * p_out]
            plane[:oy0 * ow] = zero
            plane[oy1 * ow:] = zero
            for oy in range(oy0, oy1):
                seg = plane[oy * ow:(oy + 1) * ow]
                seg[:ox0] = zero
                seg[ox1:] = zero
                if ox1 > ox0:
                    iy = oy * stride - padding + ky
                    if stride == 1:
                        seg[ox0:ox1] = x[n, c, iy, ix0:ix1]
                    else:
                        seg[ox0:ox1] = x[n, c, iy, ix0:ix1:stride]


@numba.njit(inline="always")
def _bias_act_plane(code, args):
    tmp, bias, pa, pb, keep, y, pre, i = args
    f_out, p_out = y.shape[1], y.shape[2]
    n, f = i // f_out, i % f_out
    b = bias[f]
    src = n * p_out
    for j in range(p_out):
        a = tmp[f, src + j] + b
        if keep:
            pre[n, f, j] = a
        y[n, f, j] = activate(code, pa, pb, a)


@threads.kernel
def bias_act(tmp, bias, code, pa, pb, keep, y, pre):
    """y[n, f, j] = f(tmp[f, n*P + j] + bias[f]) for the activation (code, pa, pb);
    with `keep`, pre keeps the sum too. One task per (image, filter) plane."""
    for i in numba.prange(y.shape[0] * y.shape[1]):
        specialised(code, _bias_act_plane, (tmp, bias, pa, pb, keep, y, pre, i))


@numba.njit(inline="always")
def _grad_filter(code, args):
    dy, y, pre, pa, pb, dtmp, f = args
    n_img, p_out = dy.shape[0], dy.shape[2]
    acc = 0.0
    for n in range(n_img):
        dst = n * p_out
        for j in range(p_out):
            g = activate_grad(code, pa, pb, dy[n, f, j], y[n, f, j], pre[n, f, j])
            dtmp[f, dst + j] = g
            acc += g
    return acc


@threads.kernel
def grad_gather(dy, y, pre, code, pa, pb, dtmp, db):
    """dtmp[f, n*P + j] = dL/d(pre-activation); db[f] = its sum, accumulated in float64."""
    for f in numba.prange(dy.shape[1]):
        db[f] = specialised(code, _grad_filter, (dy, y, pre, pa, pb, dtmp, f))


@threads.kernel
def col2im(dcols, k, stride, padding, oh, ow, dx):
    """dx <- sum of dcols over every (offset, output) that read each pixel.

    One thread per (image, channel) pair owns that dx plane, so += never races. The sums
    run over views indexed from 0 (see im2col), one loop per output row."""
    n_img, c_in, h, w = dx.shape
    p_out = oh * ow
    kk = k * k
    zero = np.float32(0.0)
    for i in numba.prange(n_img * c_in):
        n, c = i // c_in, i % c_in
        plane = dx[n, c]
        for iy in range(h):
            for ix in range(w):
                plane[iy, ix] = zero
        for ky in range(k):
            oy0, oy1 = _valid(oh, h, ky, stride, padding)
            for kx in range(k):
                ox0, ox1 = _valid(ow, w, kx, stride, padding)
                if ox1 <= ox0:
                    continue
                ix0 = ox0 * stride - padding + kx
                ix1 = ix0 + (ox1 - ox0 - 1) * stride + 1
                src_row = dcols[c * kk + ky * k + kx, n * p_out:(n + 1) * p_out]
                for oy in range(oy0, oy1):
                    iy = oy * stride - padding + ky
                    src = src_row[oy * ow + ox0:oy * ow + ox1]
                    if stride == 1:
                        dst = plane[iy, ix0:ix1]
                        for j in range(src.shape[0]):
                            dst[j] += src[j]
                    else:
                        dst = plane[iy, ix0:ix1:stride]
                        for j in range(src.shape[0]):
                            dst[j] += src[j]
