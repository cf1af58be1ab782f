"""The key of a training pass's random draws, and the one counter-based generator that every
random layer (dropout, dropout2) uses on the CPU and on CUDA.

Every draw is a pure function of (seed, epoch, step, layer, global sample index, element
index): no generator state, so the same key gives the same bits on any device, thread or
launch, and the draws of a sample do not depend on the batch size or on how a batch is cut
(halves on two threads, ranks of a data-parallel run). The layer's name, hashed, makes two
layers draw differently. Element j of sample n (global index) has the 64-bit counter
i = n * (elements per sample) + j; its 32 bits are `bits(i, k0, k1)`: two keyed rounds of
Wellons' lowbias32 integer hash (a 32-bit bijection with good avalanche), where (k0, k1)
hash (seed, epoch, step, layer). A unit is kept where its bits >= `threshold(rate)`.

The interface the engine passes as a random layer's `rng` (CPU) or `seed` (CUDA) argument:

    DrawKey(seed, epoch=0, step=0, sample_offset=0)

sample_offset is the global index of the first sample of the batch the layer is given: 0
for a whole batch; the executor adds a split batch's first row for its second half; rank r
of a data-parallel run that computes rows [a, b) of the global batch passes a. A plain int
is taken as DrawKey(seed=int).
"""
import zlib
from typing import NamedTuple

import numpy as np
from numba import uint64

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
_IV = (0x243F6A88, 0x85A308D3)       # pi's digits: the two key chains start apart


def bits(i, k0, k1):
    """32 random bits (a uint64 < 2^32) for the uint64 counter i under the keys (k0, k1).

    One source for both targets: numba.njit compiles it for the CPU kernels, cuda.jit for
    the CUDA ones. Each product of two 32-bit values is masked back to 32 bits: no uint64
    overflow, so the CUDA simulator's numpy scalars give the device's bits too."""
    v = (i & uint64(M32)) ^ k0
    v ^= v >> uint64(16)
    v = (v * uint64(0x7FEB352D)) & uint64(M32)
    v ^= v >> uint64(15)
    v = (v * uint64(0x846CA68B)) & uint64(M32)
    v ^= v >> uint64(16)
    v = ((v + (i >> uint64(32))) & uint64(M32)) ^ k1
    v ^= v >> uint64(16)
    v = (v * uint64(0x7FEB352D)) & uint64(M32)
    v ^= v >> uint64(15)
    v = (v * uint64(0x846CA68B)) & uint64(M32)
    v ^= v >> uint64(16)
    return v


def _mix32(v):
    """lowbias32 on a Python int (the host side of `bits`)."""
    v &= M32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & M32
    v ^= v >> 15
    v = (v * 0x846CA68B) & M32
    return v ^ (v >> 16)


def threshold(rate):
    """Keep where the 32 bits >= this: floor(rate * 2^32) (0 for rate 0: every unit kept)."""
    return np.uint64(min(int(float(rate) * 2.0 ** 32), M32))


class DrawKey(NamedTuple):
    """Which draws a training pass makes (see the module's docstring)."""
    seed: int
    epoch: int = 0
    step: int = 0
    sample_offset: int = 0

    def rows_from(self, start):
        """The key of the rows from `start` on of this key's batch."""
        return self._replace(sample_offset=self.sample_offset + int(start))

    def hash_keys(self, layer):
        """(k0, k1): the 64-bit key of `layer`'s draws in this pass, as two uint64 < 2^32."""
        seed = int(self.seed) & M64
        words = (seed & M32, seed >> 32, int(self.epoch) & M32, int(self.step) & M32,
                 int(self.step) >> 32 & M32, zlib.crc32(str(layer).encode()))
        keys = []
        for h in _IV:
            for w in words:
                h = _mix32(h ^ w)
            keys.append(np.uint64(h))
        return tuple(keys)

    def kernel_args(self, layer, sample_size):
        """(k0, k1, first counter) for a kernel drawing `layer`'s bits over a batch of
        samples of `sample_size` elements: element i of the batch has counter first + i."""
        k0, k1 = self.hash_keys(layer)
        return k0, k1, np.uint64(int(self.sample_offset) * int(sample_size) & M64)


def as_key(value):
    """A DrawKey from a DrawKey or an integer seed; anything else is a TypeError."""
    if isinstance(value, DrawKey):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return DrawKey(seed=int(value))
    raise TypeError(f"a random layer's training pass needs a layers.draw_key.DrawKey or an integer "
                    f"seed, got {type(value).__name__}")
