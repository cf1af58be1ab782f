"""Plain NumPy max / average pooling: the readable definition the kernels are checked against.

Windows are per channel. A windowed pool's output (oy, ox) covers the padded input's rows
oy*stride .. oy*stride + size - 1 (input rows less `padding`) and the same columns; the
output count is layers.pool.out_side (ceil or floor rule). Max takes the largest in-bounds
cell (padding never wins) and sends the gradient to the first one in row-major order;
average divides the in-bounds sum by the window's cells inside the padded input
(PyTorch's count_include_pad=True; cells a ceil window runs past the padding do not
count). Adaptive bins (`bins` = (H, W)) cover rows floor(i*h/H) .. ceil((i+1)*h/H) - 1 and
divide by their cell count. A fused activation `neuron` is applied after pooling.
"""
import numpy as np

from layers.neuron import reference as neuron_ref
from layers.pool import out_side


def _axis(side, size, stride, padding, ceil, outs):
    """[(slice of input cells, divisor)] for each window along one axis."""
    if outs is not None:      # adaptive bins
        return [(slice(i * side // outs, -(-(i + 1) * side // outs)),
                 -(-(i + 1) * side // outs) - i * side // outs) for i in range(outs)]
    out = []
    for o in range(out_side(side, size, stride, padding, ceil)):
        start = o * stride - padding
        out.append((slice(max(start, 0), min(start + size, side)),
                    min(start + size, side + padding) - start))
    return out


def windows(h, w, size, stride, padding=0, ceil=True, bins=None):
    """Yield (oy, ox, row slice, column slice, divisor) for every output position."""
    bh, bw = bins if bins is not None else (None, None)
    rows_all = _axis(h, size, stride, padding, ceil, bh)
    cols_all = _axis(w, size, stride, padding, ceil, bw)
    for oy, (rows, ny) in enumerate(rows_all):
        for ox, (cols, nx) in enumerate(cols_all):
            yield oy, ox, rows, cols, ny * nx


def pool(x, mode, size, stride, padding=0, ceil=True, bins=None):
    """The pre-activation pooled output [N, C, OH, OW]."""
    n, c, h, w = x.shape
    wins = list(windows(h, w, size, stride, padding, ceil, bins))
    oh, ow = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.empty((n, c, oh, ow), x.dtype)
    for oy, ox, rows, cols, count in wins:
        win = x[:, :, rows, cols]
        y[:, :, oy, ox] = win.max(axis=(2, 3)) if mode == "max" else win.sum(axis=(2, 3)) / count
    return y


def forward(x, mode, size=None, stride=None, neuron=None, padding=0, ceil=True, bins=None):
    stride = size if stride is None else stride
    return neuron_ref.forward(neuron, pool(x, mode, size, stride, padding, ceil, bins))


def backward(x, g, mode, size=None, stride=None, neuron=None, padding=0, ceil=True, bins=None):
    """dL/dx given dL/dy = g (the gradient of the activated output)."""
    stride = size if stride is None else stride
    n, c, h, w = x.shape
    g = neuron_ref.backward(neuron, g, pool(x, mode, size, stride, padding, ceil, bins))
    dx = np.zeros_like(x)
    for oy, ox, rows, cols, count in windows(h, w, size, stride, padding, ceil, bins):
        win = x[:, :, rows, cols]
        gg = g[:, :, oy, ox]
        if mode == "avg":
            dx[:, :, rows, cols] += gg[:, :, None, None] / count
        else:
            ww = win.shape[3]
            first = win.reshape(n, c, -1).argmax(axis=2)      # first maximum, row-major
            for i in range(n):
                for j in range(c):
                    dy_, dx_ = divmod(int(first[i, j]), ww)
                    dx[i, j, rows.start + dy_, cols.start + dx_] += gg[i, j]
    return dx
