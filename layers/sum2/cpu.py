"""Numba CPU kernel for the sum-of-squares cost: the squares' sum and the gradient in one pass."""
import numba
import numpy as np

from layers import threads
from layers.threads import chunk_slice


@threads.kernel
def squares_and_grad(x, scale, dx, partial):
    """dx = scale * x; partial[c] = the sum of x^2 over chunk c in float64 (flat arrays).

    Fixed chunks summed in a fixed order: the same result whatever the thread count."""
    n = x.size
    for c in numba.prange(partial.size):
        acc = 0.0
        s = chunk_slice(c, n)
        xs, dxs = x[s], dx[s]
        for i in range(xs.size):
            v = xs[i]
            dxs[i] = scale * v
            acc += np.float64(v) * np.float64(v)
        partial[c] = acc
