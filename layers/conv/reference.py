"""Plain NumPy convolution: the readable definition the kernels are checked against.

One einsum per group and kernel offset (ky, kx): slow, but each line is the formula.
b is [filters] (shared biases), [filters, OH, OW] (one per filter and output position) or
None (no bias: `bias: false`; backward's db is None then). channel_sets (lists of input
channels, one per group) makes group g read x[:, channel_sets[g]]: the convolution of the
gathered channels; dx then sums each gathered channel's gradient back into its channel.
Works in the dtype of its inputs (float64 for the reference's own gradient check).
"""
import numpy as np

from layers.neuron import reference as neuron_ref


def _out_side(size, k, stride, padding):
    return (size + 2 * padding - k) // stride + 1


def _window(xp, ky, kx, stride, oh, ow):
    """The input pixels that kernel offset (ky, kx) sees: [N, C, OH, OW] (a view)."""
    return xp[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]


def preactivation(x, w, b, stride=1, padding=0, groups=1):
    """y[n, f] = b[f] (or b[f, oy, ox]) + sum over the filter's group channels and offsets of
    w * x (cross-correlation)."""
    n, c, h, wd = x.shape
    f, cg, k, _ = w.shape
    fg = f // groups
    oh, ow = _out_side(h, k, stride, padding), _out_side(wd, k, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((n, f, oh, ow), np.result_type(x, w))
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * fg:(g + 1) * fg]
        for ky in range(k):
            for kx in range(k):
                y[:, g * fg:(g + 1) * fg] += np.einsum(
                    "ncij,fc->nfij", _window(xg, ky, kx, stride, oh, ow), wg[:, :, ky, kx])
    if b is None:
        return y
    return y + (b.reshape(1, f, 1, 1) if b.ndim == 1 else b[None])


def gathered(x, channel_sets):
    """x[:, the channels of group 0, then of group 1, ...] (x itself without channel_sets)."""
    return x if channel_sets is None else x[:, np.concatenate([np.asarray(s, int) for s in channel_sets])]


def forward(x, w, b, stride=1, padding=0, groups=1, neuron=None, channel_sets=None):
    return neuron_ref.forward(neuron, preactivation(gathered(x, channel_sets), w, b, stride, padding, groups))


def backward(dy, x, w, b, stride=1, padding=0, groups=1, neuron=None, channel_sets=None):
    """(dx, dw, db) of L = sum(dy * forward(...)), summed over the batch."""
    if channel_sets is not None:
        dxg, dw, db = backward(dy, gathered(x, channel_sets), w, b, stride, padding, groups, neuron)
        dx = np.zeros_like(x)
        np.add.at(dx, (slice(None), np.concatenate([np.asarray(s, int) for s in channel_sets])), dxg)
        return dx, dw, db
    n, c, h, wd = x.shape
    f, cg, k, _ = w.shape
    fg = f // groups
    oh, ow = dy.shape[2:]
    da = neuron_ref.backward(neuron, dy, preactivation(x, w, b, stride, padding, groups))
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for g in range(groups):
        xg, dxg = xp[:, g * cg:(g + 1) * cg], dxp[:, g * cg:(g + 1) * cg]
        wg, dag = w[g * fg:(g + 1) * fg], da[:, g * fg:(g + 1) * fg]
        for ky in range(k):
            for kx in range(k):
                dw[g * fg:(g + 1) * fg, :, ky, kx] = np.einsum(
                    "nfij,ncij->fc", dag, _window(xg, ky, kx, stride, oh, ow))
                # _window is a view, so += lands in the padded dx
                _window(dxg, ky, kx, stride, oh, ow)[...] += np.einsum(
                    "nfij,fc->ncij", dag, wg[:, :, ky, kx])
    dx = dxp[:, :, padding:padding + h, padding:padding + wd]
    db = None if b is None else da.sum(axis=(0, 2, 3) if b.ndim == 1 else 0)
    return np.ascontiguousarray(dx), dw, db
