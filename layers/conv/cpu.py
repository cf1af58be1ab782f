"""Numba CPU kernels for conv: padding, im2col, bias+activation scatter, gradient gather, col2im.

The GEMMs run in numpy's BLAS outside these kernels (measured faster than np.dot
inside njit, and it avoids calling BLAS from inside prange).
Column layout: cols[c*k*k + ky*k + kx, n*P + oy*OW + ox] with P = OH*OW, so a
group's rows are one contiguous block and each image's columns are one segment.
"""
import numba
import numpy as np

from layers import threads
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised


@threads.kernel
def pad_images(x, padding, hp, wc, xpad):
    """xpad[n, c*hp*wc + (iy + padding)*wc + ix + padding] = x[n, c, iy, ix]; zeros around:
    rows of a common width wc >= w + 2*padding, hp rows per channel plane (both paths read it)."""
    n_img, c_in, h, w = x.shape
    plane = hp * wc
    zero = np.float32(0.0)
    for i in numba.prange(n_img * c_in):
        n, c = i // c_in, i % c_in
        dst = xpad[n, c * plane:(c + 1) * plane]
        for j in range(padding * wc + padding):
            dst[j] = zero
        for iy in range(h):     # loops: Numba's slice assignment costs ~2 s of compiling cold
            row = dst[(iy + padding) * wc + padding:(iy + padding + 1) * wc + padding]
            src = x[n, c, iy]
            for ix in range(w):
                row[ix] = src[ix]
            for ix in range(w, wc):            # the right padding and the next row's left
                row[ix] = zero
        for j in range((h + padding) * wc + padding, plane):
            dst[j] = zero


@threads.kernel
def im2col(xpad, k, stride, hp, wc, oh, ow, cols):
    """cols[c*k*k + ky*k + kx, n*P + oy*ow + ox] = xpad[n, c*hp*wc + (oy*stride + ky)*wc
    + ox*stride + kx]: the k*k shifted, strided copies of the zero-padded images (pad_images).

    The padding is already zeros, so each output row is one plain copy with no bounds to
    test (~3-7x faster than clipping each segment against the edges: ResNet's 7x7 and
    AlexNet's 13x13 maps have rows of 7 and 13). The copies go through views indexed from 0
    with a unit or known stride, so the loops vectorise."""
    n_img = xpad.shape[0]
    p_out = oh * ow
    kk = k * k
    plane = hp * wc
    for r in numba.prange(cols.shape[0]):
        base = (r // kk) * plane + ((r // k) % k) * wc + r % k
        for n in range(n_img):
            for oy in range(oh):
                s0 = base + oy * stride * wc
                dst = cols[r, n * p_out + oy * ow:n * p_out + (oy + 1) * ow]
                if stride == 1:               # apart: one view type per branch keeps it contiguous
                    src = xpad[n, s0:s0 + ow]
                    for j in range(ow):
                        dst[j] = src[j]
                else:
                    src = xpad[n, s0:s0 + (ow - 1) * stride + 1:stride]
                    for j in range(ow):
                        dst[j] = src[j]


@numba.njit(inline="always")
def _bias_act_plane(code, args):
    tmp, bias, pa, pb, keep, y, pre, i = args
    f_out, p_out = y.shape[1], y.shape[2]
    n, f = i // f_out, i % f_out
    src = n * p_out
    if bias.shape[1] == 1:          # shared: one bias per filter, kept in a register
        b = bias[f, 0]
        for j in range(p_out):
            a = tmp[f, src + j] + b
            if keep:
                pre[n, f, j] = a
            y[n, f, j] = activate(code, pa, pb, a)
    else:
        for j in range(p_out):
            a = tmp[f, src + j] + bias[f, j]
            if keep:
                pre[n, f, j] = a
            y[n, f, j] = activate(code, pa, pb, a)


@activation_kernel(split="forward")
def bias_act(tmp, bias, code, pa, pb, keep, y, pre):
    """y[n, f, j] = f(tmp[f, n*P + j] + bias[f, j or 0]) for the activation (code, pa, pb);
    bias [F, 1] (shared) or [F, P] (one per position). With `keep`, pre keeps the sum too.
    One task per (image, filter) plane."""
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


@activation_kernel(split="backward", grad="dy")
def grad_gather(dy, y, pre, code, pa, pb, dtmp, db):
    """dtmp[f, n*P + j] = dL/d(pre-activation); db [F, 1]: db[f, 0] = its sum, db [F, P]
    (one bias per position): db[f, j] = its sum over the images, accumulated in float64."""
    n_img, p_out = dy.shape[0], dy.shape[2]
    for f in numba.prange(dy.shape[1]):
        total = specialised(code, _grad_filter, (dy, y, pre, pa, pb, dtmp, f))
        if db.shape[1] == 1:
            db[f, 0] = total
        else:
            for j in range(p_out):
                acc = 0.0
                for n in range(n_img):
                    acc += dtmp[f, n * p_out + j]
                db[f, j] = acc


@threads.kernel
def col2im(dcols, k, stride, padding, hp, wc, oh, ow, dxpad, dx):
    """dx <- the sum of dcols over every (tap, output) that read each pixel: im2col's adjoint,
    summed on a zero-padded plane of dxpad [N, C*hp*wc] (no bounds to test), then cropped.
    One task per (image, channel) pair owns that plane, so += never races."""
    n_img, c_in, h, w = dx.shape
    p_out = oh * ow
    kk = k * k
    span = hp * wc
    zero = np.float32(0.0)
    for i in numba.prange(n_img * c_in):
        n, c = i // c_in, i % c_in
        plane = dxpad[n, c * span:(c + 1) * span]
        for j in range(span):
            plane[j] = zero
        for t in range(kk):
            row = dcols[c * kk + t, n * p_out:(n + 1) * p_out]
            base = (t // k) * wc + t % k
            for oy in range(oh):
                s0 = base + oy * stride * wc
                src = row[oy * ow:(oy + 1) * ow]
                if stride == 1:
                    dst = plane[s0:s0 + ow]
                    for j in range(ow):
                        dst[j] += src[j]
                else:
                    dst = plane[s0:s0 + (ow - 1) * stride + 1:stride]
                    for j in range(ow):
                        dst[j] += src[j]
        for iy in range(h):
            src = plane[(iy + padding) * wc + padding:(iy + padding) * wc + padding + w]
            for ix in range(w):
                dx[n, c, iy, ix] = src[ix]


# ---- direct convolution (stride 1): no im2col, no GEMM ------------------------------------
# For convolutions with few filters on small images (CIFAR-10's and LeNet's), im2col and
# col2im cost as much as the GEMMs, whose M = filters is awkward for BLAS. These kernels
# convolve directly, one image at a time, on a zero-padded copy of it stored flat: rows of
# a common width `wc`, channel planes of `hp * wc`. On that layout every tap (c, ky, kx) is
# one shift: out[f, j] += w[f, c, ky, kx] * xpad[c*hp*wc + ky*wc + kx + j] for the flat
# output index j = oy*wc + ox, one long contiguous loop over j (the columns ox >= ow of
# each output row are computed and dropped). Backward data is the same loop over the
# zero-padded gradient with the flipped weights; backward weights are dot products over j.
# `_shift_accumulate` blocks 4 filters x 4 taps per pass over j, so each loaded input value
# feeds 4 filters and each accumulator load/store carries 4 taps (measured 4x4 > 1x8).


@numba.njit(**threads.kernel_flags())          # one compile (and cache entry) for every caller
def _shift_accumulate(src, off, wt, acc, n_out):
    """acc[f, :n_out] += sum over t of wt[f, t] * src[off[t]:off[t] + n_out], every f."""
    f_count, t_count = wt.shape
    t4 = t_count - t_count % 4
    f = 0
    while f + 4 <= f_count:
        a0, a1, a2, a3 = acc[f, :n_out], acc[f + 1, :n_out], acc[f + 2, :n_out], acc[f + 3, :n_out]
        for t in range(0, t4, 4):
            x0, x1 = src[off[t]:off[t] + n_out], src[off[t + 1]:off[t + 1] + n_out]
            x2, x3 = src[off[t + 2]:off[t + 2] + n_out], src[off[t + 3]:off[t + 3] + n_out]
            w00, w01, w02, w03 = wt[f, t], wt[f, t + 1], wt[f, t + 2], wt[f, t + 3]
            w10, w11, w12, w13 = wt[f + 1, t], wt[f + 1, t + 1], wt[f + 1, t + 2], wt[f + 1, t + 3]
            w20, w21, w22, w23 = wt[f + 2, t], wt[f + 2, t + 1], wt[f + 2, t + 2], wt[f + 2, t + 3]
            w30, w31, w32, w33 = wt[f + 3, t], wt[f + 3, t + 1], wt[f + 3, t + 2], wt[f + 3, t + 3]
            for j in range(n_out):
                v0, v1, v2, v3 = x0[j], x1[j], x2[j], x3[j]
                a0[j] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                a1[j] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                a2[j] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                a3[j] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
        for t in range(t4, t_count):
            x0 = src[off[t]:off[t] + n_out]
            w0, w1, w2, w3 = wt[f, t], wt[f + 1, t], wt[f + 2, t], wt[f + 3, t]
            for j in range(n_out):
                v0 = x0[j]
                a0[j] += w0 * v0
                a1[j] += w1 * v0
                a2[j] += w2 * v0
                a3[j] += w3 * v0
        f += 4
    while f < f_count:
        a0 = acc[f, :n_out]
        for t in range(0, t4, 4):
            x0, x1 = src[off[t]:off[t] + n_out], src[off[t + 1]:off[t + 1] + n_out]
            x2, x3 = src[off[t + 2]:off[t + 2] + n_out], src[off[t + 3]:off[t + 3] + n_out]
            w0, w1, w2, w3 = wt[f, t], wt[f, t + 1], wt[f, t + 2], wt[f, t + 3]
            for j in range(n_out):
                a0[j] += w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j]
        for t in range(t4, t_count):
            x0 = src[off[t]:off[t] + n_out]
            w0 = wt[f, t]
            for j in range(n_out):
                a0[j] += w0 * x0[j]
        f += 1


@numba.njit(inline="always")
def _bias_act_direct(code, args):
    acc, bias, pa, pb, keep, y, pre, n, ow, wc = args
    f_out, p_out = y.shape[1], y.shape[2]
    step = 0 if bias.shape[1] == 1 else 1           # bias [F, 1] shared, [F, P] per position
    for f in range(f_out):
        for j in range(p_out):
            a = acc[f, (j // ow) * wc + j % ow] + bias[f, j * step]
            if keep:
                pre[n, f, j] = a
            y[n, f, j] = activate(code, pa, pb, a)


@activation_kernel(split="forward")
def direct_forward(xpad, off, w2, bias, groups, oh, ow, wc, code, pa, pb, keep, y, pre):
    """y[n, f] = f(bias + conv of xpad[n]) for w2 [filters, taps of one group]; y, pre
    [N, F, oh*ow]. One task per image; the sums go to a per-image [F, oh*wc] scratch."""
    n_img, f_out = y.shape[0], y.shape[1]
    fg = f_out // groups
    span = xpad.shape[1] // groups
    n_out = (oh - 1) * wc + ow
    for n in numba.prange(n_img):
        acc = np.zeros((f_out, oh * wc), np.float32)
        for g in range(groups):
            _shift_accumulate(xpad[n, g * span:(g + 1) * span], off, w2[g * fg:(g + 1) * fg],
                              acc[g * fg:(g + 1) * fg], n_out)
        specialised(code, _bias_act_direct, (acc, bias, pa, pb, keep, y, pre, n, ow, wc))


@numba.njit(inline="always")
def _grad_pad_filter(code, args):
    dy, y, pre, pa, pb, a, oh, ow, wc, dzp, f = args
    n_img = dy.shape[0]
    zero = np.float32(0.0)
    acc = 0.0
    for n in range(n_img):
        dst = dzp[n, f]
        for j in range(a * wc + a):
            dst[j] = zero
        for oy in range(oh):
            row = dst[(oy + a) * wc + a:(oy + a + 1) * wc + a]
            for ox in range(ow):
                g = activate_grad(code, pa, pb, dy[n, f, oy * ow + ox], y[n, f, oy * ow + ox],
                                  pre[n, f, oy * ow + ox])
                row[ox] = g
                acc += g
            for ox in range(ow, wc):
                row[ox] = zero
        for j in range((oh + a) * wc + a, dst.shape[0]):
            dst[j] = zero
    return acc


@activation_kernel(split="backward", grad="dy")
def direct_grad_gather(dy, y, pre, code, pa, pb, a, oh, ow, wc, dzp, db):
    """dzp[n, f, (oy + a)*wc + ox + a] = dL/d(pre-activation), zeros around (a = size-1-padding:
    the padding a full convolution needs); db [F, 1]: db[f, 0] = its sum, db [F, P] (one bias
    per position): db[f, oy*ow + ox] = its sum over the images, accumulated in float64."""
    n_img = dy.shape[0]
    for f in numba.prange(dy.shape[1]):
        total = specialised(code, _grad_pad_filter, (dy, y, pre, pa, pb, a, oh, ow, wc, dzp, f))
        if db.shape[1] == 1:
            db[f, 0] = total
        else:
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0
                    for n in range(n_img):
                        acc += dzp[n, f, (oy + a) * wc + ox + a]
                    db[f, oy * ow + ox] = acc


@numba.njit(inline="always")
def _dot_taps(src, off, d0, d1, d2, d3, dw, f, t, n_out):
    """dw[f + i, t + u] += d[i] . src[off[t + u]:][:n_out] for 4 filters i and 4 taps u."""
    x0, x1 = src[off[t]:off[t] + n_out], src[off[t + 1]:off[t + 1] + n_out]
    x2, x3 = src[off[t + 2]:off[t + 2] + n_out], src[off[t + 3]:off[t + 3] + n_out]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(n_out):
        v0, v1, v2, v3 = x0[j], x1[j], x2[j], x3[j]
        g0, g1, g2, g3 = d0[j], d1[j], d2[j], d3[j]
        s00 += g0 * v0
        s01 += g0 * v1
        s02 += g0 * v2
        s03 += g0 * v3
        s10 += g1 * v0
        s11 += g1 * v1
        s12 += g1 * v2
        s13 += g1 * v3
        s20 += g2 * v0
        s21 += g2 * v1
        s22 += g2 * v2
        s23 += g2 * v3
        s30 += g3 * v0
        s31 += g3 * v1
        s32 += g3 * v2
        s33 += g3 * v3
    dw[f, t] += s00
    dw[f, t + 1] += s01
    dw[f, t + 2] += s02
    dw[f, t + 3] += s03
    dw[f + 1, t] += s10
    dw[f + 1, t + 1] += s11
    dw[f + 1, t + 2] += s12
    dw[f + 1, t + 3] += s13
    dw[f + 2, t] += s20
    dw[f + 2, t + 1] += s21
    dw[f + 2, t + 2] += s22
    dw[f + 2, t + 3] += s23
    dw[f + 3, t] += s30
    dw[f + 3, t + 1] += s31
    dw[f + 3, t + 2] += s32
    dw[f + 3, t + 3] += s33


@threads.kernel
def direct_dweight(xpad, dzp, off, groups, start, n_out, dw):
    """dw[f, t] = sum over images of dzp[n, f, start:][:n_out] . xpad[n, group][off[t]:][:n_out]
    (start = a*(wc + 1): where the gradient of output 0 lies). One task per block of 4 filters."""
    n_img, f_out = dzp.shape[0], dzp.shape[1]
    fg, taps = f_out // groups, dw.shape[1]
    span = xpad.shape[1] // groups
    per_group = (fg + 3) // 4
    t4 = taps - taps % 4
    zero = np.float32(0.0)
    for i in numba.prange(groups * per_group):
        g = i // per_group
        f0 = g * fg + (i % per_group) * 4
        f1 = min(f0 + 4, (g + 1) * fg)
        for f in range(f0, f1):
            for t in range(taps):
                dw[f, t] = zero
        for n in range(n_img):
            src = xpad[n, g * span:(g + 1) * span]
            if f1 - f0 == 4:
                d0, d1 = dzp[n, f0, start:start + n_out], dzp[n, f0 + 1, start:start + n_out]
                d2, d3 = dzp[n, f0 + 2, start:start + n_out], dzp[n, f0 + 3, start:start + n_out]
                for t in range(0, t4, 4):
                    _dot_taps(src, off, d0, d1, d2, d3, dw, f0, t, n_out)
            for f in range(f0 + (f1 - f0) // 4 * 4, f1):
                df = dzp[n, f, start:start + n_out]
                for t in range(t4 if f1 - f0 == 4 else 0, taps):
                    x0 = src[off[t]:off[t] + n_out]
                    s = np.float32(0.0)
                    for j in range(n_out):
                        s += df[j] * x0[j]
                    dw[f, t] += s
            if f1 - f0 == 4:
                for f in range(f0, f1):
                    df = dzp[n, f, start:start + n_out]
                    for t in range(t4, taps):
                        x0 = src[off[t]:off[t] + n_out]
                        s = np.float32(0.0)
                        for j in range(n_out):
                            s += df[j] * x0[j]
                        dw[f, t] += s


@threads.kernel
def direct_dx(dzp, offq, w4, groups, h, w, wc, dx):
    """dx[n, c] = full convolution of dzp[n] (the gradient, zero-padded by size-1-padding)
    with the flipped filters of c's group. One task per image."""
    n_img, c_in = dx.shape[0], dx.shape[1]
    f_out, cg, k = w4.shape[0], w4.shape[1], w4.shape[2]
    fg = f_out // groups
    span = dzp.shape[2]
    # wflip[c, (f_local, ky, kx)] = w[f, c_local, k-1-ky, k-1-kx] of c's group
    wflip = np.empty((c_in, fg * k * k), np.float32)
    for c in range(c_in):
        g, cl = c // cg, c % cg
        for fl in range(fg):
            for ky in range(k):
                for kx in range(k):
                    wflip[c, (fl * k + ky) * k + kx] = w4[g * fg + fl, cl, k - 1 - ky, k - 1 - kx]
    n_out = (h - 1) * wc + w
    for n in numba.prange(n_img):
        acc = np.zeros((c_in, h * wc), np.float32)
        src_all = dzp[n].reshape(f_out * span)
        for g in range(groups):
            _shift_accumulate(src_all[g * fg * span:(g + 1) * fg * span], offq,
                              wflip[g * cg:(g + 1) * cg], acc[g * cg:(g + 1) * cg], n_out)
        for c in range(c_in):
            for iy in range(h):
                for ix in range(w):
                    dx[n, c, iy, ix] = acc[c, iy * wc + ix]


# ---- channel_sets: the gather of each group's channels and its adjoint --------------------
@threads.kernel
def gather_channels(x, index, xg):
    """xg[n, j] = x[n, index[j]] (planes [H, W])."""
    n_img, count = xg.shape[0], xg.shape[1]
    for i in numba.prange(n_img * count):
        n, j = i // count, i % count
        xg[n, j] = x[n, index[j]]


@threads.kernel
def scatter_add_channels(dxg, index, dx):
    """dx[n, c] = sum of dxg[n, j] over the j with index[j] == c (zero if none): the adjoint of
    gather_channels. One task per image, summing in j order, so the same on every run."""
    n_img, count = dxg.shape[0], dxg.shape[1]
    zero = np.float32(0.0)
    for n in numba.prange(n_img):
        dx[n] = zero
        for j in range(count):
            plane, src = dx[n, index[j]], dxg[n, j]
            for iy in range(plane.shape[0]):
                for ix in range(plane.shape[1]):
                    plane[iy, ix] += src[iy, ix]
