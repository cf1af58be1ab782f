"""Numba CPU kernels for eltmax (flat float32 arrays), one input at a time."""
import numba
import numpy as np

from layers import threads

CHUNK = 16384


@threads.kernel
def max_into(x, index, y, arg):
    """Input `index` joins the running maximum: index 0 starts it (y = x, arg = 0); later
    inputs win only where strictly greater, so a tie stays with the earlier input."""
    n = x.size
    k = np.float32(index)
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            if index == 0 or x[i] > y[i]:
                y[i] = x[i]
                arg[i] = k


@threads.kernel
def route(dy, arg, index, dx):
    """dx = dy where input `index` won, else 0."""
    n = dy.size
    k = np.float32(index)
    zero = np.float32(0.0)
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            dx[i] = dy[i] if arg[i] == k else zero
