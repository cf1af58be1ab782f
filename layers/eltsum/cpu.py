"""Numba CPU kernel for eltsum (flat float32 arrays); its `scale` is layers/elementwise_cpu.py's."""
import numba

from layers import threads

CHUNK = 16384


@threads.kernel
def axpby(a, x, b, z, out):
    """out = a * x + b * z (out may be z: each element is read before it is written)."""
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = a * x[i] + b * z[i]
