"""Plain NumPy inverted dropout and its counter-based generator: the readable definition the
kernels are checked against (layers.draw_key holds the kernels' own).

Element j of global sample n of a layer's input (samples of D elements) has the counter
i = n * D + j; its 32 random bits are lowbias32(lowbias32(lo32(i) ^ k0) + hi32(i) ^ k1),
where (k0, k1) chain lowbias32 over the words of (seed, epoch, step, crc32(layer name)).
A unit is kept where its bits >= floor(rate * 2^32) (probability 1 - rate), and kept units
are scaled by 1 / (1 - rate), so E[y] = x and the test-time pass is the identity.
"""
import zlib

import numpy as np

M32 = 0xFFFFFFFF


def lowbias32(v):
    """Wellons' lowbias32 on uint64 arrays holding 32-bit values (or on a Python int)."""
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & M32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & M32
    return v ^ (v >> 16)


def layer_keys(layer, seed, epoch=0, step=0):
    """(k0, k1) of a layer's draws in the pass (seed, epoch, step)."""
    words = [seed & M32, seed >> 32 & M32, epoch & M32, step & M32, step >> 32 & M32,
             zlib.crc32(layer.encode())]
    keys = []
    for h in (0x243F6A88, 0x85A308D3):
        for w in words:
            h = lowbias32(h ^ w)
        keys.append(h)
    return keys


def counters(shape, sample_offset=0):
    """uint64 counters of a batch of `shape` whose first sample has global index sample_offset."""
    per_sample = int(np.prod(shape[1:]))
    index = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    return np.uint64(sample_offset * per_sample) + index


def bits(i, k0, k1):
    """The 32 random bits of each uint64 counter in i."""
    k0, k1, m32 = np.uint64(k0), np.uint64(k1), np.uint64(M32)
    h = lowbias32((i & m32) ^ k0)
    return lowbias32(((h + (i >> np.uint64(32))) & m32) ^ k1)


def kept(layer, shape, rate, seed, epoch=0, step=0, sample_offset=0):
    """Boolean keep mask of a layer's training pass on a batch of `shape`."""
    k0, k1 = layer_keys(layer, seed, epoch, step)
    return bits(counters(shape, sample_offset), k0, k1) >= np.uint64(min(int(rate * 2.0 ** 32), M32))


def mask(keep, rate):
    """The scaled keep mask from the boolean keep decisions."""
    return keep.astype(np.float32) / np.float32(1.0 - rate)


def forward(x, keep, rate):
    """(y, mask) for the training pass."""
    m = mask(keep, rate)
    return x * m, m


def backward(dy, m):
    return dy * m
