"""Numba CPU kernels for PReLU on the input seen as [N, C, S]; slope[c % slope.size] is the
channel's slope (one entry when shared)."""
import numba
import numpy as np

from layers import threads

ZERO = np.float32(0.0)


@threads.kernel
def forward(x, slope, y):
    n, c, s = x.shape
    for t in numba.prange(n * c):
        i = t // c
        ch = t - i * c
        a = slope[ch % slope.size]
        for j in range(s):
            v = x[i, ch, j]
            y[i, ch, j] = v if v > ZERO else a * v


@threads.kernel
def backward(dy, x, slope, need_dx, dx, dslope):
    """dx = dy where x > 0, slope * dy elsewhere (with need_dx); dslope[c] = sum of dy * x
    over x <= 0 (per channel: the shared slope's gradient is their sum). Parallel over
    channels; each channel's sum accumulates in dslope (see layers/batchnorm/cpu.py why)."""
    n, c, s = x.shape
    for ch in numba.prange(c):
        a = slope[ch % slope.size]
        dslope[ch] = ZERO
        for i in range(n):
            part = ZERO
            for j in range(s):
                v = x[i, ch, j]
                g = dy[i, ch, j]
                if v > ZERO:
                    if need_dx:
                        dx[i, ch, j] = g
                else:
                    part += g * v
                    if need_dx:
                        dx[i, ch, j] = a * g
            dslope[ch] += part
