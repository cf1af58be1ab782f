"""Numba CPU kernels for max / average pooling with a fused activation.

One parallel task per (image, channel) plane; inner loops run along the contiguous
width. The max kernels record, per output, the plane-local row-major index of the
winning input (int32), so backward is a scatter that never rereads the input. The
activation is (code, pa, pb) as layers/neuron/spec.py defines it; each plane's loop runs
through `specialised`, so relu and the identity get branch-free loops of their own.
Window geometry (`padding`, adaptive bins, the divisor rule): layers/pool/__init__.py.
"""
import numba
import numpy as np

from layers import threads
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised, uses_input
from layers.threads import WORKERS, worker_tasks

ZERO = np.float32(0.0)


@numba.njit(inline="always")
def _span(o, size, stride, pad, side):
    """[lo, hi): the input rows (or columns) of window o, clipped at the edges."""
    lo = o * stride - pad
    return max(lo, 0), min(lo + size, side)


@numba.njit(inline="always")
def _window(o, size, stride, pad, adaptive, side, outs):
    """[lo, hi) of average window o, and its divisor: the cells inside the padded input
    (count_include_pad), or for adaptive bins [floor(o*side/outs), ceil((o+1)*side/outs))."""
    if adaptive:
        lo = o * side // outs
        hi = ((o + 1) * side + outs - 1) // outs
        return lo, hi, hi - lo
    start = o * stride - pad
    return max(start, 0), min(start + size, side), min(start + size, side + pad) - start


def max_scratch_shape(w, pad=0):
    """Float32 shape of max_forward's scratch: per worker, four rows of the padded width."""
    return (WORKERS, 4, w + pad)


@numba.njit(inline="always")
def _merge(v, i, best, where, k):
    """Keep (v, i) at k where it beats (best, where): larger, or equal and earlier."""
    better = (v > best[k]) | ((v == best[k]) & (i < where[k]))
    best[k] = v if better else best[k]
    where[k] = i if better else where[k]


@numba.njit(inline="always")
def _max_plane(code, args):
    """One plane, one output row at a time, in two passes that run along contiguous
    memory: the column maxima over the window's rows (vm, with their flat indices vi),
    then the maxima of vm over `size` neighbouring columns (hm, hi) at every column;
    output ox takes column ox * stride. Ties keep the smaller flat index: the first
    maximum in row-major order, as one scan of the window with a strict '>' finds it.
    With padding, column xx of hm is the window starting at padded column xx (input column
    xx - pad); one starting in the padding first takes input column 0, which merging again
    leaves as it is."""
    x, size, stride, pad, pa, pb, y, arg, pre, p, rows = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    xp, yp, ap = x[p // c, p % c], y[p // c, p % c], arg[p // c, p % c]
    vm, hm = rows[0], rows[2]
    vi, hi = rows[1].view(np.int32), rows[3].view(np.int32)
    span = (ow - 1) * stride + 1               # the padded columns where an output window starts
    inside = min(pad, span)                    # those starting in the left padding
    for oy in range(oh):
        y0, y1 = _span(oy, size, stride, pad, h)
        for xx in range(w):
            vm[xx] = xp[y0, xx]
            vi[xx] = y0 * w + xx
        for yy in range(y0 + 1, y1):
            row = xp[yy]
            for xx in range(w):
                _merge(row[xx], yy * w + xx, vm, vi, xx)
        for xx in range(inside):
            hm[xx] = vm[0]
            hi[xx] = vi[0]
        for xx in range(inside, span):
            hm[xx] = vm[xx - pad]
            hi[xx] = vi[xx - pad]
        for dx in range(1, size):
            for xx in range(max(pad - dx, 0), min(span, w + pad - dx)):
                _merge(vm[xx + dx - pad], vi[xx + dx - pad], hm, hi, xx)
        for ox in range(ow):
            v = hm[ox * stride]
            ap[oy, ox] = hi[ox * stride]
            if uses_input(code):
                pre[p // c, p % c, oy, ox] = v
            yp[oy, ox] = activate(code, pa, pb, v)


@activation_kernel(split="forward")
def max_forward(x, size, stride, pad, code, pa, pb, y, arg, pre, scratch):
    """y = f(max over each window's in-bounds cells); arg = index h*W + w of the first
    maximum (row-major); pre = the pooled value before the activation, written only where
    uses_input(code). scratch: [WORKERS, 4, W + pad] float32, each worker's rows (no task
    allocates)."""
    workers = scratch.shape[0]
    for wk in numba.prange(workers):
        t0, t1 = worker_tasks(wk, workers, x.shape[0] * x.shape[1])
        for p in range(t0, t1):
            specialised(code, _max_plane, (x, size, stride, pad, pa, pb, y, arg, pre, p, scratch[wk]))


@numba.njit(inline="always")
def _max_grad_plane(code, args):
    g, y, pre, arg, pa, pb, dx, p = args
    c, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    i, j = p // c, p % c
    for k in range(dx.shape[2]):
        dx[i, j, k] = ZERO
    for oy in range(oh):
        for ox in range(ow):
            gg = activate_grad(code, pa, pb, g[i, j, oy, ox], y[i, j, oy, ox],
                               pre[i, j, oy, ox] if uses_input(code) else ZERO)
            dx[i, j, arg[i, j, oy, ox]] += gg


@activation_kernel(split="backward", grad="g")
def max_backward(g, y, pre, arg, code, pa, pb, dx):
    """dx (flat planes [N, C, H*W]) = scatter of f'(g) to the recorded maxima.

    Only the first maximal element of a window receives its gradient, as in PyTorch and
    Caffe; cuda-convnet's kLocalMaxUndo instead gives it to every element equal to the max."""
    for p in numba.prange(g.shape[0] * g.shape[1]):
        specialised(code, _max_grad_plane, (g, y, pre, arg, pa, pb, dx, p))


@numba.njit(inline="always")
def _avg_plane(code, args):
    x, size, stride, pad, adaptive, pa, pb, y, pre, p = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    i, j = p // c, p % c
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        for ox in range(ow):
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            s = ZERO
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    s += x[i, j, yy, xx]
            v = np.divide(s, np.float32(ny * nx))
            if uses_input(code):
                pre[i, j, oy, ox] = v
            y[i, j, oy, ox] = activate(code, pa, pb, v)


@activation_kernel(split="forward")
def avg_forward(x, size, stride, pad, adaptive, code, pa, pb, y, pre):
    """y = f(sum over each window / its divisor (_window))."""
    for p in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _avg_plane, (x, size, stride, pad, adaptive, pa, pb, y, pre, p))


@numba.njit(inline="always")
def _avg_grad_plane(code, args):
    g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p = args
    c, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    h, w = dx.shape[2], dx.shape[3]
    i, j = p // c, p % c
    for yy in range(h):
        for xx in range(w):
            dx[i, j, yy, xx] = ZERO
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        for ox in range(ow):
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            gg = activate_grad(code, pa, pb, g[i, j, oy, ox], y[i, j, oy, ox],
                               pre[i, j, oy, ox] if uses_input(code) else ZERO)
            gg = np.divide(gg, np.float32(ny * nx))
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    dx[i, j, yy, xx] += gg


@activation_kernel(split="backward", grad="g")
def avg_backward(g, y, pre, size, stride, pad, adaptive, code, pa, pb, dx):
    """dx = sum over the windows containing each input of f'(g) / window divisor."""
    for p in numba.prange(g.shape[0] * g.shape[1]):
        specialised(code, _avg_grad_plane, (g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p))
