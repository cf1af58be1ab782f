"""Plain NumPy locally connected layer (cuda-convnet's `local`): the readable definition the
kernels are checked against. Works in the dtype of its inputs (float64 for gradient checks).

A convolution whose filters are not shared: output location p = oy*OW + ox has its own
bank w[p] [filters, channels/groups, size, size] and its own biases b[:, oy, ox]:

    y[n, f, oy, ox] = b[f, oy, ox] + sum_{c, ky, kx} w[p, f, c, ky, kx]
                                     * xpad[n, g(f)*C/groups + c, oy*stride + ky, ox*stride + kx]

with g(f) = f // (filters/groups) and xpad the input with `padding` zeros on each side
(and `padding_end` more past the bottom and right edges).
"""
import numpy as np

from layers.base import out_size_floor
from layers.neuron import reference as neuron_ref


def pad(x, padding, padding_end=0):
    after = padding + padding_end
    return np.pad(x, ((0, 0), (0, 0), (padding, after), (padding, after)))


def patches(x, k, stride, padding, padding_end, oh, ow):
    """xpad's window of every output location: [N, OH, OW, C, k, k] (a view of a padded copy)."""
    xp = pad(x, padding, padding_end)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))   # [N, C, H', W', k, k]
    return win[:, :, ::stride, ::stride][:, :, :oh, :ow].transpose(0, 2, 3, 1, 4, 5)


def _shapes(x, w, stride, padding, padding_end, groups):
    n, c, h, wd = x.shape
    _, f, cg, k, _ = w.shape
    e = padding_end
    oh, ow = out_size_floor(h + e, k, stride, padding), out_size_floor(wd + e, k, stride, padding)
    return n, c, f, cg, k, oh, ow, f // groups


def preactivation(x, w, b, stride=1, padding=0, groups=1, padding_end=0):
    n, c, f, cg, k, oh, ow, fg = _shapes(x, w, stride, padding, padding_end, groups)
    win = patches(x, k, stride, padding, padding_end, oh, ow).reshape(n, oh, ow, groups, cg, k, k)
    wg = w.reshape(oh, ow, groups, fg, cg, k, k)
    y = np.einsum("nijgckl,ijgfckl->ngfij", win, wg).reshape(n, f, oh, ow)
    return y + b[None]


def forward(x, w, b, stride=1, padding=0, groups=1, neuron=None, padding_end=0):
    return neuron_ref.forward(neuron, preactivation(x, w, b, stride, padding, groups, padding_end))


def backward(dy, x, w, b, stride=1, padding=0, groups=1, neuron=None, padding_end=0):
    """(dx, dw, db) of L = sum(dy * forward(...)), summed over the batch."""
    n, c, f, cg, k, oh, ow, fg = _shapes(x, w, stride, padding, padding_end, groups)
    pre = preactivation(x, w, b, stride, padding, groups, padding_end)
    da = neuron_ref.backward(neuron, dy, pre)
    dag = da.reshape(n, groups, fg, oh, ow)
    win = patches(x, k, stride, padding, padding_end, oh, ow).reshape(n, oh, ow, groups, cg, k, k)
    wg = w.reshape(oh, ow, groups, fg, cg, k, k)
    dw = np.einsum("ngfij,nijgckl->ijgfckl", dag, win).reshape(w.shape)
    dwin = np.einsum("ngfij,ijgfckl->nijgckl", dag, wg).reshape(n, oh, ow, c, k, k)
    dxp = np.zeros_like(pad(x, padding, padding_end), np.result_type(x, w))
    for ky in range(k):
        for kx in range(k):
            # every location's offset (ky, kx) reads xpad[oy*stride + ky, ox*stride + kx]
            dxp[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride] += \
                dwin[:, :, :, :, ky, kx].transpose(0, 3, 1, 2)
    dx = dxp[:, :, padding:padding + x.shape[2], padding:padding + x.shape[3]]
    return np.ascontiguousarray(dx), dw, da.sum(axis=0)
