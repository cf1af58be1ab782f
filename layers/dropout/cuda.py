"""CUDA kernels for inverted dropout with a counter-based random mask.

The keep decision for element i is a pure function of (seed, i): two keyed rounds of
Wellons' `lowbias32` integer hash (a 32-bit bijection with good avalanche), so there is
no device RNG state, the same seed gives the same mask on any launch configuration, and
backward recomputes the mask from the seed instead of storing it. Element i is kept when
its 32-bit hash h >= floor(rate * 2^32) (probability 1 - rate up to 2^-32) and kept
elements are scaled by 1 / (1 - rate). At test time the layer is the identity.

The hash is computed in uint64 with each product of two 32-bit values masked back to 32
bits: no product overflows 64 bits, so the CUDA simulator (numpy scalars) gives the same
bits as the GPU without overflow warnings. CPU and CUDA masks differ by design (the CPU
draws from a numpy Generator).
"""
import numpy as np
from numba import cuda, float32, uint64

from layers.cudabase import BLOCK, CudaLayer, blocks_for

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
def dropout_forward(x, y, k0, k1, threshold, scale):
    """y = x * scale where the element is kept, else 0 (flat float32)."""
    i = cuda.grid(1)
    if i < x.size:
        if _bits(i, k0, k1) >= threshold:
            y[i] = x[i] * scale
        else:
            y[i] = float32(0.0)


@cuda.jit
def dropout_backward(dy, dx, k0, k1, threshold, scale):
    """dx = dy * the same scaled mask, recomputed from the keys."""
    i = cuda.grid(1)
    if i < dy.size:
        if _bits(i, k0, k1) >= threshold:
            dx[i] = dy[i] * scale
        else:
            dx[i] = float32(0.0)


_SIG = "void(float32[::1], float32[::1], uint64, uint64, uint64, float32)"
KERNELS = [(dropout_forward, _SIG), (dropout_backward, _SIG)]


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


class DropoutCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        rate = float(layer.cfg["rate"])
        self.threshold = threshold(rate)
        self.scale = np.float32(1.0 / (1.0 - rate))
        self._keys = None       # None: the latest forward was at test time (identity)

    def forward(self, x, params, train, seed, stream):
        if not train:
            self._keys = None
            return x
        if seed is None:
            raise ValueError(f"dropout '{self.name}': training needs an integer seed")
        self._keys, self._shape = keys(seed), x.shape
        y = self.buffer("y", x.shape)
        flat = x.reshape(-1)
        dropout_forward[blocks_for(flat.size), BLOCK, stream](
            flat, y.reshape(-1), *self._keys, self.threshold, self.scale)
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        if self._keys is None:
            return dy, {}
        dx = self.buffer("dx", self._shape)
        flat = dy.reshape(-1)
        dropout_backward[blocks_for(flat.size), BLOCK, stream](
            flat, dx.reshape(-1), *self._keys, self.threshold, self.scale)
        return dx, {}


def make(layer):
    return DropoutCuda(layer)
