"""Plain NumPy inverted dropout: the readable definition the kernels are checked against.

A unit is kept where its uniform draw u in [0, 1) is >= rate (probability 1 - rate),
and kept units are scaled by 1 / (1 - rate), so E[y] = x and the test-time pass is
the identity.
"""
import numpy as np


def mask(u, rate):
    """The scaled keep mask from uniforms u."""
    return (u >= rate).astype(np.float32) / np.float32(1.0 - rate)


def forward(x, u, rate):
    """(y, mask) for the training pass."""
    m = mask(u, rate)
    return x * m, m


def backward(dy, m):
    return dy * m
