"""Numba CPU kernels on flat float32 arrays shared by several layer types: dropout's mask
(also dropout2's, with rate = 1 - keep and scale 1), drawn by layers.draw_key's counter-based
generator (the CUDA kernels' own), and a scale (eltsum, dropout2)."""
import numba
import numpy as np

from layers import draw_key, threads
from layers.threads import CHUNK, chunk_slice, chunks

_bits = numba.njit(inline="always")(draw_key.bits)


@threads.kernel
def dropout_forward(x, k0, k1, first, threshold, scale, mask, y):
    """mask[i] = scale where the bits of counter first + i (layers.draw_key) >= threshold,
    else 0; y = x * mask."""
    n = x.size
    for c in numba.prange(chunks(n)):
        s = chunk_slice(c, n)
        xs, ms, ys = x[s], mask[s], y[s]
        base = first + numba.uint64(c * CHUNK)
        for i in range(xs.size):
            m = scale if _bits(base + numba.uint64(i), k0, k1) >= threshold else np.float32(0.0)
            ms[i] = m
            ys[i] = xs[i] * m


@threads.kernel
def dropout_backward(dy, mask, dx):
    n = dy.size
    for c in numba.prange(chunks(n)):
        s = chunk_slice(c, n)
        dys, ms, dxs = dy[s], mask[s], dx[s]
        for i in range(dys.size):
            dxs[i] = dys[i] * ms[i]


@threads.kernel
def scale(a, x, out):
    """out = a * x."""
    n = x.size
    for c in numba.prange(chunks(n)):
        s = chunk_slice(c, n)
        xs, outs = x[s], out[s]
        for i in range(xs.size):
            outs[i] = a * xs[i]
