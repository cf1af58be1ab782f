"""Plain NumPy max / average pooling: the readable definition the kernels are checked against.

Windows are per channel: output (oy, ox) covers input rows oy*stride .. oy*stride + size - 1
and the same columns, clipped at the bottom/right edge (cuda-convnet's ceil rule lets the
last window run off the edge). Average divides by the number of in-bounds elements; max
sends the gradient to the first maximal element of the window in row-major order.
A fused activation `neuron` is applied after pooling.
"""
import numpy as np

from layers.base import out_size_ceil
from layers.neuron import reference as neuron_ref


def windows(h, w, size, stride):
    """Yield (oy, ox, row slice, column slice) for every output position."""
    for oy in range(out_size_ceil(h, size, stride)):
        rows = slice(oy * stride, min(oy * stride + size, h))
        for ox in range(out_size_ceil(w, size, stride)):
            yield oy, ox, rows, slice(ox * stride, min(ox * stride + size, w))


def pool(x, mode, size, stride):
    """The pre-activation pooled output [N, C, OH, OW]."""
    n, c, h, w = x.shape
    y = np.empty((n, c, out_size_ceil(h, size, stride), out_size_ceil(w, size, stride)), x.dtype)
    for oy, ox, rows, cols in windows(h, w, size, stride):
        win = x[:, :, rows, cols]
        y[:, :, oy, ox] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return y


def forward(x, mode, size, stride=None, neuron=None):
    stride = size if stride is None else stride
    return neuron_ref.forward(neuron, pool(x, mode, size, stride))


def backward(x, g, mode, size, stride=None, neuron=None):
    """dL/dx given dL/dy = g (the gradient of the activated output)."""
    stride = size if stride is None else stride
    n, c, h, w = x.shape
    g = neuron_ref.backward(neuron, g, pool(x, mode, size, stride))
    dx = np.zeros_like(x)
    for oy, ox, rows, cols in windows(h, w, size, stride):
        win = x[:, :, rows, cols]
        gg = g[:, :, oy, ox]
        if mode == "avg":
            dx[:, :, rows, cols] += gg[:, :, None, None] / win[0, 0].size
        else:
            ww = win.shape[3]
            first = win.reshape(n, c, -1).argmax(axis=2)      # first maximum, row-major
            for i in range(n):
                for j in range(c):
                    dy_, dx_ = divmod(int(first[i, j]), ww)
                    dx[i, j, rows.start + dy_, cols.start + dx_] += gg[i, j]
    return dx
