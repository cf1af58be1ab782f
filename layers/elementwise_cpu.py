"""Numba CPU kernels on flat float32 arrays shared by several layer types: dropout's mask
(also dropout2's, with rate = 1 - keep and scale 1), drawn by layers.draw_key's counter-based
generator (the CUDA kernels' own), and a scale (eltsum, dropout2)."""
import numba
import numpy as np

from layers import draw_key, threads

CHUNK = 16384
_bits = numba.njit(inline="always")(draw_key.bits)


@threads.kernel
def dropout_forward(x, k0, k1, first, threshold, scale, mask, y):
    """mask[i] = scale where the bits of counter first + i (layers.draw_key) >= threshold,
    else 0; y = x * mask."""
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        start = c * CHUNK
        base = first + numba.uint64(start)    # a chunk's loop counts from 0: it vectorises
        for j in range(min(n, start + CHUNK) - start):
            m = scale if _bits(base + numba.uint64(j), k0, k1) >= threshold else np.float32(0.0)
            mask[start + j] = m
            y[start + j] = x[start + j] * m


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
