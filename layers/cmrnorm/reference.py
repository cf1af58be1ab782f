"""Plain NumPy cross-map response normalisation: the definition the kernels are checked against.

    d_c = k + alpha / size * sum_{c' in window(c)} a_{c'}^2,      b_c = a_c * d_c^-beta

window(c) = maps c - size//2 .. c - size//2 + size - 1, clipped to [0, C).
"""
import numpy as np


def window(c, size, channels):
    start = c - size // 2
    return slice(max(0, start), min(channels, start + size))


def denominator(x, size, alpha, k):
    """d = k + alpha/size * (sum of squares over each map's window), shape of x."""
    d = np.empty_like(x)
    sq = x * x
    for c in range(x.shape[1]):
        d[:, c] = k + alpha / size * sq[:, window(c, size, x.shape[1])].sum(axis=1)
    return d


def forward(x, size, alpha=1e-4, beta=0.75, k=2.0):
    return x * denominator(x, size, alpha, k) ** -beta


def backward(x, g, size, alpha=1e-4, beta=0.75, k=2.0):
    """dL/da_i = g_i d_i^-beta - 2 alpha beta / size * a_i * sum_{j: i in window(j)} g_j a_j d_j^(-beta-1)."""
    d = denominator(x, size, alpha, k)
    t = g * x * d ** (-beta - 1)
    dx = g * d ** -beta
    channels = x.shape[1]
    for j in range(channels):
        dx[:, window(j, size, channels)] -= (2 * alpha * beta / size) * x[:, window(j, size, channels)] * t[:, j:j + 1]
    return dx
