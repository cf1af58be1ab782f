"""Numba CPU kernel for the sum-of-squares cost: the squares' sum and the gradient in one pass."""
import numba
import numpy as np

from layers import threads

CHUNK = 16384      # elements per parallel task; the partial sums are then added in order


@threads.kernel
def squares_and_grad(x, scale, dx, partial):
    """dx = scale * x; partial[c] = the sum of x^2 over chunk c in float64 (flat arrays).

    Fixed chunks summed in a fixed order: the same result whatever the thread count."""
    n = x.size
    for c in numba.prange(partial.size):
        acc = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            v = x[i]
            dx[i] = scale * v
            acc += np.float64(v) * np.float64(v)
        partial[c] = acc
