"""Numba CPU kernels for eltmax (flat float32 arrays), one input at a time."""
import numba
import numpy as np

from layers import threads
from layers.threads import chunk_slice, chunks


@threads.kernel
def max_into(x, index, y, arg):
    """Input `index` joins the running maximum: index 0 starts it (y = x, arg = 0); later
    inputs win only where strictly greater, so a tie stays with the earlier input."""
    n = x.size
    k = np.float32(index)
    for c in numba.prange(chunks(n)):
        s = chunk_slice(c, n)
        xs, ys, args = x[s], y[s], arg[s]
        for i in range(xs.size):
            if index == 0 or xs[i] > ys[i]:
                ys[i] = xs[i]
                args[i] = k


@threads.kernel
def route(dy, arg, index, dx):
    """dx = dy where input `index` won, else 0."""
    n = dy.size
    k = np.float32(index)
    zero = np.float32(0.0)
    for c in numba.prange(chunks(n)):
        s = chunk_slice(c, n)
        dys, args, dxs = dy[s], arg[s], dx[s]
        for i in range(dys.size):
            dxs[i] = dys[i] if args[i] == k else zero
