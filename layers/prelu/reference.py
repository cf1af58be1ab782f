"""Plain NumPy PReLU (He et al. 2015, PyTorch's nn.PReLU): the definition the kernels are
checked against. x3 is the input seen as [N, C, S]; `slope` has C entries (one per channel)
or one (shared). y = x where x > 0, slope * x elsewhere; gradients of the sum over the batch."""
import numpy as np


def _per_channel(slope, c):
    return np.broadcast_to(np.asarray(slope).reshape(-1), (c,))[None, :, None]


def forward(x3, slope):
    return np.where(x3 > 0, x3, _per_channel(slope, x3.shape[1]) * x3)


def backward(dy3, x3, slope):
    """(dx, dslope): dslope sums dy * x where x <= 0, per channel (or over all of them)."""
    a = _per_channel(slope, x3.shape[1])
    dx = np.where(x3 > 0, dy3, a * dy3)
    per_channel = np.where(x3 > 0, 0.0, dy3 * x3).sum(axis=(0, 2))
    return dx, (per_channel if np.size(slope) > 1 else per_channel.sum(keepdims=True))
