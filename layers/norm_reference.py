"""NumPy helpers shared by the same-map normalisations' references (rnorm, cnorm).

The window of pixel (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same for
columns, clipped at the image edges; the divisor stays size^2 at the edges.
"""
import numpy as np


def window(p, size, extent):
    start = p - size // 2
    return slice(max(0, start), min(extent, start + size))


def denominator(x, size, alpha, k):
    h, w = x.shape[2:]
    sq = x * x
    d = np.empty_like(x)
    for y in range(h):
        for xx in range(w):
            d[:, :, y, xx] = sq[:, :, window(y, size, h), window(xx, size, w)].sum(axis=(2, 3))
    return k + alpha / size ** 2 * d
