"""Numba CPU kernels for conv: padding, im2col, bias+activation scatter, gradient gather, col2im.

The GEMMs run in numpy's BLAS outside these kernels (measured faster than np.dot
inside njit, and it avoids calling BLAS from inside prange).
Column layout: cols[c*k*k + ky*k + kx, n*P + oy*OW + ox] with P = OH*OW, so a
group's rows are one contiguous block and each image's columns are one segment.
"""
import numba
import numpy as np

from layers import threads
from layers.conv.winograd import split_row
from layers.fma_tiles import (DOT_FILTERS, DOT_TAPS, LANES, TILE_FILTERS, dot_tiles, run_row_tiles,
                              run_tiles)
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised
from layers.threads import worker_tasks


@threads.kernel
def pad_images(x, padding, stride, phases, hp, wc, xpad):
    """xpad[n, c*hp*R + i*R + (py*phases + px)*wc + j] = x[n, c, i*stride + py - padding,
    j*stride + px - padding] (R = phases^2 * wc), zeros where that is outside x: the
    zero-padded image split into phases^2 phase images (py, px < phases) whose rows, wc
    wide, lie side by side in rows of R. With stride 1 and one phase it is the padded image
    itself (the GEMM path's); with stride s the direct path's phases make a strided
    convolution a stride-1 one: tap (ky, kx) reads phase (ky % s, kx % s) at the shift
    (ky // s, kx // s) from the output's position, and the taps of one output row read a
    few neighbouring rows of R (apart phase planes read at 1.6x the time)."""
    n_img, c_in, h, w = x.shape
    nph = phases * phases
    span = hp * nph * wc
    zero = np.float32(0.0)
    if stride == 1:                     # one phase (phases = min(stride, size))
        for i in numba.prange(n_img * c_in):
            _pad_plane(x, padding, hp, wc, xpad, i)
        return
    # each phase's columns inside x, [j0, j1), and where they start in x's row: the same for
    # every row (per row, their integer divisions cost as much as the copies)
    cols = np.empty((phases, 3), np.int64)
    for px in range(phases):
        j0 = max(0, -((px - padding) // stride))
        cols[px, 0], cols[px, 1] = j0, min(wc, (w - 1 + padding - px) // stride + 1)
        cols[px, 2] = j0 * stride + px - padding
    r0, py0 = padding // stride, padding % stride        # row 0's padded row r*stride + py
    # stride 2: a row's two phases lie side by side, its even padded columns then its odd, as
    # the Winograd path splits rows (split_row, 16 floats at a time: the digits ResNet's
    # 16-channel 28x28 maps at b64, one core, 0.81 -> 0.59 ms), where x's columns fit them
    pairs = stride == 2 and phases == 2 and (w - 1 + padding) // 2 < wc
    for i in numba.prange(n_img * c_in):     # strided: the phases
        n, c = i // c_in, i % c_in
        # zeros, then x's rows into the phases (1.3x faster than each phase row's zeros and
        # pixels apart)
        dst = xpad[n, c * span:(c + 1) * span]
        for j in range(span):     # loops: Numba's slice assignment costs ~2 s of compiling cold
            dst[j] = zero
        r, py = r0, py0
        for iy in range(h):
            if py < phases and r < hp:
                xr = x[n, c, iy]
                if pairs:
                    at = (r * nph + py * phases) * wc
                    split_row(xr, w, padding, wc, dst[at:at + 2 * wc])
                else:
                    for px in range(phases):
                        j0, j1 = cols[px, 0], cols[px, 1]
                        if j1 <= j0:
                            continue
                        at = (r * nph + py * phases + px) * wc
                        row = dst[at + j0:at + j1]
                        src = xr[cols[px, 2]:]              # from 0, stride 2 a constant: the loop
                        if stride == 2:                     # vectorises
                            for j in range(row.size):
                                row[j] = src[2 * j]
                        else:
                            for j in range(row.size):
                                row[j] = src[j * stride]
            py += 1
            if py == stride:
                r, py = r + 1, 0


@numba.njit(inline="always")
def _pad_plane(x, padding, hp, wc, xpad, i):
    """pad_images at stride 1 (one phase), plane i = n*C + c: the plane zeroed in one loop,
    then x's rows copied in, their bounds worked out once (a row's zeros, pixels and zeros
    in three loops cost 1.4x this on CIFAR-10's 16-wide rows; per row's bounds, 2-2.5x)."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    span = hp * wc
    left = min(padding, wc)
    cw = max(0, min(w, wc - padding))           # x's columns inside a row
    zero = np.float32(0.0)
    n, c = i // c_in, i % c_in
    dst = xpad[n, c * span:(c + 1) * span]
    for j in range(span):
        dst[j] = zero
    for iy in range(max(0, -padding), min(h, hp - padding)):
        out = dst[(iy + padding) * wc + left:(iy + padding) * wc + left + cw]
        src = x[n, c, iy, :cw]
        for j in range(cw):
            out[j] = src[j]


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
    # rows as slices looped from 0: they vectorise (threads.chunk_slice); _bias_act_tile's
    # loops are these, written out there: as one inline helper its forward ran 18% slower
    src, ys, pres = tmp[f, n * p_out:(n + 1) * p_out], y[n, f], pre[n, f]
    if bias.shape[1] == 1:          # shared: one bias per filter, kept in a register
        b = bias[f, 0]
        for j in range(p_out):
            a = src[j] + b
            if keep:
                pres[j] = a
            ys[j] = activate(code, pa, pb, a)
    else:
        bs = bias[f]
        for j in range(p_out):
            a = src[j] + bs[j]
            if keep:
                pres[j] = a
            ys[j] = activate(code, pa, pb, a)


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
        dst, dys, ys, pres = dtmp[f, n * p_out:(n + 1) * p_out], dy[n, f], y[n, f], pre[n, f]
        for j in range(p_out):
            g = activate_grad(code, pa, pb, dys[j], ys[j], pres[j])
            dst[j] = g
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
# The images are zero-padded (pad_images) into flat planes, rows of a common width `wc`,
# channel planes of `hp * wc`; on that layout every tap (c, ky, kx) is one shift:
# out[f, oy*wc + ox] = sum over taps of w[f, tap] * xpad[off[tap] + oy*wc + ox]. The
# register tiles of layers.fma_tiles compute it for 6 filters at two runs of 8 outputs, or 4
# at three, at a time (`vec`: each run's start in the padded rows and in the tile's scratch,
# whose rows are rounded up to whole runs), reading the padded images and the weights in
# place. Backward data is the same tile over the zero-padded gradient with the flipped
# filters (packed tap-major: pack_flipped); backward weights are dot products of the
# gradient's runs with the shifted inputs.
# Every buffer the tiles read carries fma_tiles.SLACK zeros past its last image.


@threads.kernel
def pack_flipped(w4, groups, source, wq):
    """wq[b, t*tf + i] = w4[g*fg + f_local, c_local, ky, kx] for channel c_local = the i-th of
    block b of group g (tf = wq's columns / taps) and (f_local, ky, kx) = source[t], zeros
    past the group's channels: the filters of the full convolutions that give dx, in the
    order of their taps."""
    f_out, cg = w4.shape[0], w4.shape[1]
    fg = f_out // groups
    per = wq.shape[0] // groups
    tf = _tile_rows(wq, source.shape[0])
    zero = np.float32(0.0)
    for b in numba.prange(wq.shape[0]):
        g, c0 = b // per, (b % per) * tf
        for i in range(tf):
            cl = c0 + i
            for t in range(source.shape[0]):
                wq[b, t * tf + i] = (w4[g * fg + source[t, 0], cl, source[t, 1], source[t, 2]]
                                     if cl < cg else zero)


@numba.njit(inline="always")
def _tile_rows(packed, taps):
    """The filters (or channels) of one tile block of packed weights [blocks, taps * rows]."""
    return packed.shape[1] // taps if taps > 0 else TILE_FILTERS


@numba.njit(inline="always")
def _block_task(task, groups, blocks, rows, tf):
    """Task -> (image n, block b of tf rows, its group g, the block's rows [r0, r1)), for
    `blocks` blocks an image and `rows` rows (filters, or dx's channels) a group."""
    per = blocks // groups
    n, b = task // blocks, task % blocks
    g = b // per
    r0 = g * rows + (b % per) * tf
    return n, b, g, r0, min(r0 + tf, (g + 1) * rows)


@numba.njit(inline="always")
def _bias_act_tile(code, args):
    acc, rows, bias, pa, pb, keep, y, pre, n, f0, f1, ow, ow8 = args
    oh = y.shape[2] // ow
    for f in range(f0, f1):
        for oy in range(oh):
            # rows as slices looped from 0: they vectorise (threads.chunk_slice)
            src = acc[(f - f0) * rows + oy * ow8:(f - f0) * rows + oy * ow8 + ow]
            ys, pres = y[n, f, oy * ow:(oy + 1) * ow], pre[n, f, oy * ow:(oy + 1) * ow]
            if bias.shape[1] == 1:
                b = bias[f, 0]
                for ox in range(ow):
                    a = src[ox] + b
                    if keep:
                        pres[ox] = a
                    ys[ox] = activate(code, pa, pb, a)
            else:
                bs = bias[f, oy * ow:(oy + 1) * ow]
                for ox in range(ow):
                    a = src[ox] + bs[ox]
                    if keep:
                        pres[ox] = a
                    ys[ox] = activate(code, pa, pb, a)


@activation_kernel(split="forward")
def direct_forward(xpad, x_img, off, w, tf, vec, ow, ow8, bias, groups, code, pa, pb, keep, scratch, y, pre):
    """y[n, f] = f(bias + conv of image n): xpad flat (image n at n*x_img, group g's channels
    x_img/groups further), w the weights as the layer holds them, flat (filter f's taps at
    f*taps), y and pre [N, F, oh*ow]. A task is one (image, block of tf = 6 or 4 filters:
    the tile's); the tasks are dealt out to the rows of scratch [workers, 6*rows] (rows >=
    oh*ow8: output rows rounded up to whole runs of 8), where each task's tiles put its sums."""
    n_img, f_out = y.shape[0], y.shape[1]
    rows = scratch.shape[1] // TILE_FILTERS
    workers = scratch.shape[0]
    blocks = groups * ((f_out // groups + tf - 1) // tf)
    for wk in numba.prange(workers):
        t0, t1 = worker_tasks(wk, workers, n_img * blocks)
        acc = scratch[wk]
        for task in range(t0, t1):
            n, b, g, f0, f1 = _block_task(task, groups, blocks, f_out // groups, tf)
            run_row_tiles(xpad, n * x_img + g * (x_img // groups), off, w, f0, f1, tf, vec, acc, rows)
            specialised(code, _bias_act_tile, (acc, rows, bias, pa, pb, keep, y, pre, n, f0, f1, ow, ow8))


@numba.njit(inline="always")
def _crop_phase(acc, rows, phase, stride, padding, dx, n, c0, c1):
    """dx[n, c, i*stride + py - padding, j*stride + px - padding] for c in [c0, c1) and the
    phase's rows and columns from its sums in acc (rows of `rows`, runs of w8)."""
    py, px, i0, j0, ni, nj, w8 = phase[0], phase[1], phase[2], phase[3], phase[4], phase[5], phase[6]
    x0 = j0 * stride + px - padding
    for c in range(c0, c1):
        src = acc[(c - c0) * rows:(c - c0 + 1) * rows]
        for i in range(ni):
            iy = (i0 + i) * stride + py - padding
            row = src[i * w8:i * w8 + nj]
            if stride == 1:                 # apart: one view type per branch keeps it contiguous
                dst = dx[n, c, iy, x0:x0 + nj]
                for j in range(nj):
                    dst[j] = row[j]
            else:
                dst = dx[n, c, iy, x0:x0 + (nj - 1) * stride + 1:stride]
                for j in range(nj):
                    dst[j] = row[j]


@threads.kernel
def direct_dx(dzp, dz_img, offq, wq, vec, phase, stride, padding, groups, scratch, dx):
    """dx[n, c] from image n's zero-padded gradient (dzp flat, image n at n*dz_img, group g's
    filters dz_img/groups further) and the flipped filters (wq from pack_flipped): for each
    phase of the input (pixels (i*stride + py, j*stride + px) of the padded image) a full
    convolution with the taps (ky, kx) = (py, px) modulo stride. phase [phases, 10]: py, px,
    its first row i0 and column j0, rows and columns, the scratch row width, its taps
    [t0, t1) of offq and wq, where its runs begin in vec (the next phase's start ends
    them). A task is one (image, block of a tile's 6 or 4 channels), each phase's sums in
    scratch [workers, 6*rows] as direct_forward's; pixels no tap reads (stride > size) get 0."""
    n_img, c_in, h, w = dx.shape
    rows = scratch.shape[1] // TILE_FILTERS
    workers = scratch.shape[0]
    tf = _tile_rows(wq, offq.shape[0])
    zero = np.float32(0.0)
    for wk in numba.prange(workers):
        t0, t1 = worker_tasks(wk, workers, n_img * wq.shape[0])
        acc = scratch[wk]
        for task in range(t0, t1):
            n, b, g, c0, c1 = _block_task(task, groups, wq.shape[0], c_in // groups, tf)
            if phase.shape[0] < stride * stride:
                for c in range(c0, c1):
                    for iy in range(h):
                        for ix in range(w):
                            dx[n, c, iy, ix] = zero
            for q in range(phase.shape[0]):
                o0, o1, v0 = phase[q, 7], phase[q, 8], phase[q, 9]
                v1 = phase[q + 1, 9] if q + 1 < phase.shape[0] else vec.shape[0]
                run_tiles(dzp, n * dz_img + g * (dz_img // groups), offq[o0:o1],
                          wq[b, o0 * tf:o1 * tf], vec[v0:v1], acc, rows)
                _crop_phase(acc, rows, phase[q], stride, padding, dx, n, c0, c1)


@numba.njit(inline="always")
def _grad_pad_filter(code, args):
    dy, y, pre, pa, pb, a, oh, ow, wc, dzp, f = args
    n_img = dy.shape[0]
    zero = np.float32(0.0)
    acc = 0.0
    for n in range(n_img):
        dst = dzp[n, f]
        for j in range(dst.size):       # zeros, then the rows (as pad_images: one loop, not
            dst[j] = zero               # each row's zeros apart)
        for oy in range(oh):
            # rows as slices looped from 0: they vectorise (threads.chunk_slice)
            row = dst[(oy + a) * wc + a:(oy + a) * wc + a + ow]
            j0, j1 = oy * ow, (oy + 1) * ow
            dys, ys, pres = dy[n, f, j0:j1], y[n, f, j0:j1], pre[n, f, j0:j1]
            for ox in range(ow):
                g = activate_grad(code, pa, pb, dys[ox], ys[ox], pres[ox])
                row[ox] = g
                acc += g
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


DW_TAPS = 16 * DOT_TAPS     # taps per direct_dweight task: 16 dot tiles
DW_IMAGES = 2               # images per dot_tiles call: 4 filters' gradients of 2 images stay in L1
DW_RUNS = 64                # runs of 8 outputs per dot_tiles call: 4 filters' gradients of 2 images
                            # over them (16 KB) stay in L1 across the task's taps (ResNet-18's
                            # 112x112 stem: their whole planes, 430 KB, did not)
DW_MAX_IMAGES = 4           # images per call where an image has few runs (DW_RUNS // runs): on 8x8
                            # maps a dot tile's loop over 2 images was 16 runs, its setup and sums
                            # a large share (one core, b64: CIFAR-10's conv3 5.11 -> 4.90 ms, the
                            # digits ResNet's layer3 3.50 -> 3.23; 8 images: slower, out of L1)
DW_SUMS = DW_TAPS * DOT_FILTERS * LANES      # a task's partial sums, lane by lane


@threads.kernel
def direct_dweight(xpad, x_img, dzp, dz_img, start, off, groups, n_img, pos, scratch, dw):
    """dw[f, t] = sum over images n and output positions of image n's gradient of filter f
    (dzp flat, planes of dz_img/F, zero outside the outputs, which begin at `start`) times
    its input at tap t (xpad flat as direct_forward's). `pos` [runs, 2]: where the runs of 8
    output positions start in the gradient's rows (padded ones, whose zeros a run's lanes
    past the row's end read; or dy's own where no run crosses a row's end) and in the input's. A task is one (group, block of 4
    filters, DW_TAPS taps), its sums in scratch [workers, DW_SUMS]."""
    f_out, taps = dw.shape
    fg = f_out // groups
    plane = dz_img // f_out
    x_grp = x_img // groups
    fblocks = (fg + DOT_FILTERS - 1) // DOT_FILTERS
    tblocks = (taps + DW_TAPS - 1) // DW_TAPS
    tile = DOT_FILTERS * DOT_TAPS * LANES
    workers = scratch.shape[0]
    zero = np.float32(0.0)
    per_call = max(DW_IMAGES, min(DW_MAX_IMAGES, DW_RUNS // max(pos.shape[0], 1)))
    for wk in numba.prange(workers):
        w0, w1 = worker_tasks(wk, workers, groups * fblocks * tblocks)
        acc = scratch[wk]
        for task in range(w0, w1):
            g, rest = task // (fblocks * tblocks), task % (fblocks * tblocks)
            f0 = g * fg + (rest // tblocks) * DOT_FILTERS
            f1 = min(f0 + DOT_FILTERS, (g + 1) * fg)
            t0 = (rest % tblocks) * DW_TAPS
            t1 = min(t0 + DW_TAPS, taps)
            fl = f1 - 1                     # a block's missing filters and taps repeat its last
            zb = (f0 * plane + start, min(f0 + 1, fl) * plane + start,
                  min(f0 + 2, fl) * plane + start, min(f0 + 3, fl) * plane + start)
            for j in range(acc.shape[0]):
                acc[j] = zero
            for n0 in range(0, n_img, per_call):
                images = min(per_call, n_img - n0)
                dz_n, x_n = dzp[n0 * dz_img:], xpad[n0 * x_img:]
                for r0 in range(0, pos.shape[0], DW_RUNS):
                    dot_tiles(dz_n, zb, x_n, g * x_grp, off, t0, t1, images, dz_img, x_img,
                              pos[r0:r0 + DW_RUNS], acc)
            for t in range(t0, t1):
                for f in range(f0, f1):
                    k = (t - t0) // DOT_TAPS * tile + ((f - f0) * DOT_TAPS + (t - t0) % DOT_TAPS) * LANES
                    s = zero
                    for lane in range(LANES):
                        s += acc[k + lane]
                    dw[f, t] = s


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
