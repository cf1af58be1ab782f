"""Sums over a batch per channel, on arrays seen as [N, C, S]: batch normalisation's
statistics and a bias's gradient read the same loop."""
import numba
import numpy as np

from layers import threads

ZERO = np.float32(0.0)


@numba.njit(inline="always")
def channel_sum(x, ch, total):
    """total + the sum of x[:, ch, :], a float32 partial sum per image (total: the
    accumulator's zero, float32 or float64; a partial sum vectorises, a float64 one over
    float32 values converts each)."""
    for i in range(x.shape[0]):
        part = ZERO
        for j in range(x.shape[2]):
            part += x[i, ch, j]
        total += part
    return total


@threads.kernel
def channel_sums(x, out):
    """out[c] (float64) = the sum of x[:, c, :]: a batch normalisation's share of a batch's
    mean when the batch is cut over processes; a bias's gradient."""
    for ch in numba.prange(x.shape[1]):
        out[ch] = channel_sum(x, ch, 0.0)
