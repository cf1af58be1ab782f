"""CUDA kernels on flat float32 arrays shared by several layer types: the counter-based
dropout mask (dropout; dropout2 with rate = 1 - keep and scale 1) and a scale (eltsum, dropout2).

The keep decision for element i is a pure function of (seed, i): two keyed rounds of
Wellons' `lowbias32` integer hash (a 32-bit bijection with good avalanche), so there is
no device RNG state, the same seed gives the same mask on any launch configuration, and
backward recomputes the mask from the seed instead of storing it. Element i is kept when
its 32-bit hash h >= floor(rate * 2^32) (probability 1 - rate up to 2^-32) and kept
elements are scaled by `scale` (dropout's 1 / (1 - rate); dropout2's 1).

The hash is computed in uint64 with each product of two 32-bit values masked back to 32
bits: no product overflows 64 bits, so the CUDA simulator (numpy scalars) gives the same
bits as the GPU without overflow warnings. CPU and CUDA masks differ by design (the CPU
draws from a numpy Generator).
"""
import numpy as np
from numba import cuda, float32, uint64

from layers.cudabase import BLOCK, blocks_for

_M32 = 0xFFFFFFFF


@cuda.jit(device=True, inline="always")
def _mix32(v):
    """lowbias32 on a uint64 holding a 32-bit value; returns a uint64 < 2^32."""
    v ^= v >> uint64(16)
    v = (v * uint64(0x7FEB352D)) & uint64(0xFFFFFFFF)
    v ^= v >> uint64(15)
    v = (v * uint64(0x846CA68B)) & uint64(0xFFFFFFFF)
    v ^= v >> uint64(16)
    return v


@cuda.jit(device=True, inline="always")
def _bits(i, k0, k1):
    """32 random bits for element i under the keys (k0, k1)."""
    u = uint64(i)
    h = _mix32((u & uint64(0xFFFFFFFF)) ^ k0)
    return _mix32(((h + (u >> uint64(32))) & uint64(0xFFFFFFFF)) ^ k1)


@cuda.jit
def dropout_mask(src, dst, k0, k1, threshold, scale):
    """dst = src * scale where the element is kept, else 0 (flat float32). The mask comes
    from the keys, so the backward (src = dy) recomputes the forward's mask."""
    i = cuda.grid(1)
    if i < src.size:
        if _bits(i, k0, k1) >= threshold:
            dst[i] = src[i] * scale
        else:
            dst[i] = float32(0.0)




def _mix32_host(v):
    v &= _M32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & _M32
    v ^= v >> 15
    v = (v * 0x846CA68B) & _M32
    v ^= v >> 16
    return v


def keys(seed):
    """The two 32-bit hash keys for an integer seed (any size: its low 64 bits count)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0 = _mix32_host((seed & _M32) ^ _mix32_host((seed >> 32) ^ 0x243F6A88))
    k1 = _mix32_host(k0 ^ 0x9E3779B9)
    return np.uint64(k0), np.uint64(k1)


def threshold(rate):
    """Keep where the 32-bit hash >= this: floor(rate * 2^32), 0 for rate 0."""
    return np.uint64(min(int(float(rate) * 2.0 ** 32), _M32))


@cuda.jit
def scale_kernel(a, x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i]


_SIG = "void(float32[::1], float32[::1], uint64, uint64, uint64, float32)"
KERNELS = [(dropout_mask, _SIG), (scale_kernel, "void(float32, float32[::1], float32[::1])")]


def scale(a, x, out, stream):
    """out = a * x for device arrays of one size (any shape, contiguous)."""
    flat = out.reshape(-1)
    scale_kernel[blocks_for(flat.size), BLOCK, stream](np.float32(a), x.reshape(-1), flat)
    return out
