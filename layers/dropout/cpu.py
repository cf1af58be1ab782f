"""Numba CPU kernels for inverted dropout (flat float32 arrays)."""
import numba
import numpy as np

from layers import threads

CHUNK = 16384


@threads.kernel
def forward(x, u, rate, scale, y):
    """Turn the uniforms u into the scaled keep mask in place (u >= rate -> scale,
    else 0) and write y = x * mask."""
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            m = scale if u[i] >= rate else np.float32(0.0)
            u[i] = m
            y[i] = x[i] * m


@threads.kernel
def backward(dy, mask, dx):
    n = dy.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            dx[i] = dy[i] * mask[i]
