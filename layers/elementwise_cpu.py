"""Numba CPU kernels on flat float32 arrays shared by several layer types: dropout's mask
(also dropout2's, with rate = 1 - keep and scale 1) and a scale (eltsum, dropout2)."""
import numba
import numpy as np

from layers import threads

CHUNK = 16384


@threads.kernel
def dropout_forward(x, u, rate, scale, y):
    """Turn the uniforms u into the scaled keep mask in place (u >= rate -> scale,
    else 0) and write y = x * mask."""
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            m = scale if u[i] >= rate else np.float32(0.0)
            u[i] = m
            y[i] = x[i] * m


@threads.kernel
def dropout_backward(dy, mask, dx):
    n = dy.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            dx[i] = dy[i] * mask[i]


@threads.kernel
def scale(a, x, out):
    """out = a * x."""
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = a * x[i]
