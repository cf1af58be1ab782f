"""Numba CPU kernels for max / average pooling with a fused activation.

One parallel task per (image, channel) plane; inner loops run along the contiguous
width. The max kernels record, per output, the plane-local row-major index of the
winning input (int32), so backward is a scatter that never rereads the input.
"""
import numba
import numpy as np

from layers import threads  # noqa: F401  (threading layer chosen before any kernel runs)
from layers.neuron.cpu import act, act_grad


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def max_forward(x, size, stride, code, y, arg, pre):
    """y = act(max over each window); arg = index h*W + w of the first maximum (row-major);
    pre = the pooled value before the activation, written only for code 4 (abs)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        for oy in range(oh):
            y0 = oy * stride
            y1 = min(y0 + size, h)
            for ox in range(ow):
                x0 = ox * stride
                x1 = min(x0 + size, w)
                best = x[i, j, y0, x0]
                where = y0 * w + x0
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        v = x[i, j, yy, xx]
                        # strict '>': ties keep the earliest element (PyTorch / Caffe)
                        if v > best:
                            best = v
                            where = yy * w + xx
                arg[i, j, oy, ox] = where
                if code == 4:
                    pre[i, j, oy, ox] = best
                y[i, j, oy, ox] = act(code, best)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def max_backward(g, y, pre, arg, code, dx):
    """dx (flat planes [N, C, H*W]) = scatter of act'(g) to the recorded maxima.

    Only the first maximal element of a window receives its gradient, as in PyTorch and
    Caffe; cuda-convnet's kLocalMaxUndo instead gives it to every element equal to the max."""
    n, c, oh, ow = g.shape
    hw = dx.shape[2]
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        for k in range(hw):
            dx[i, j, k] = 0.0
        for oy in range(oh):
            for ox in range(ow):
                gg = act_grad(code, g[i, j, oy, ox], y[i, j, oy, ox],
                              pre[i, j, oy, ox] if code == 4 else np.float32(0.0))
                dx[i, j, arg[i, j, oy, ox]] += gg


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def avg_forward(x, size, stride, code, y, pre):
    """y = act(mean over each window, divided by its in-bounds element count)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        for oy in range(oh):
            y0 = oy * stride
            y1 = min(y0 + size, h)
            for ox in range(ow):
                x0 = ox * stride
                x1 = min(x0 + size, w)
                s = np.float32(0.0)
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        s += x[i, j, yy, xx]
                v = s / np.float32((y1 - y0) * (x1 - x0))
                if code == 4:
                    pre[i, j, oy, ox] = v
                y[i, j, oy, ox] = act(code, v)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def avg_backward(g, y, pre, size, stride, code, dx):
    """dx = sum over the windows containing each input of act'(g) / window count."""
    n, c, oh, ow = g.shape
    h, w = dx.shape[2], dx.shape[3]
    for p in numba.prange(n * c):
        i, j = p // c, p % c
        for yy in range(h):
            for xx in range(w):
                dx[i, j, yy, xx] = 0.0
        for oy in range(oh):
            y0 = oy * stride
            y1 = min(y0 + size, h)
            for ox in range(ow):
                x0 = ox * stride
                x1 = min(x0 + size, w)
                gg = act_grad(code, g[i, j, oy, ox], y[i, j, oy, ox],
                              pre[i, j, oy, ox] if code == 4 else np.float32(0.0))
                gg = gg / np.float32((y1 - y0) * (x1 - x0))
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        dx[i, j, yy, xx] += gg
