"""CUDA kernels on flat float32 arrays shared by several layer types: the counter-based
dropout mask (dropout; dropout2 with rate = 1 - keep and scale 1) and a scale (eltsum, dropout2).

The keep decision for element i is layers.draw_key's `bits` of its counter first + i (the
CPU kernels' very function, compiled here for the device): no device RNG state, the same
key gives the same mask on any launch configuration and as on the CPU, and backward
recomputes the mask from the key instead of storing it. Kept elements are scaled by
`scale` (dropout's 1 / (1 - rate); dropout2's 1).
"""
import numpy as np
from numba import cuda, float32, uint64

from layers import draw_key
from layers.cudabase import BLOCK, blocks_for

_bits = cuda.jit(device=True, inline="always")(draw_key.bits)


@cuda.jit
def dropout_mask(src, dst, k0, k1, first, threshold, scale):
    """dst = src * scale where the element is kept, else 0 (flat float32). The mask comes
    from the keys, so the backward (src = dy) recomputes the forward's mask."""
    i = cuda.grid(1)
    if i < src.size:
        if _bits(first + uint64(i), k0, k1) >= threshold:
            dst[i] = src[i] * scale
        else:
            dst[i] = float32(0.0)


@cuda.jit
def scale_kernel(a, x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i]


_SIG = "void(float32[::1], float32[::1], uint64, uint64, uint64, uint64, float32)"
KERNELS = [(dropout_mask, _SIG), (scale_kernel, "void(float32, float32[::1], float32[::1])")]


def scale(a, x, out, stream):
    """out = a * x for device arrays of one size (any shape, contiguous)."""
    flat = out.reshape(-1)
    scale_kernel[blocks_for(flat.size), BLOCK, stream](np.float32(a), x.reshape(-1), flat)
    return out
