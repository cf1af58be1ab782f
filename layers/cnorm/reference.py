"""Plain NumPy same-map contrast normalisation (cuda-convnet's `cnorm`): the definition the
kernels are checked against. Works in the dtype of its input (float64 for gradient checks).

    m(p) = mean of x over the window of p (the in-bounds pixels only)
    u    = x - m
    d(p) = k + alpha / size^2 * sum over the window of p of u^2,      y = x * d^-beta

The window of pixel (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same
columns, clipped at the image edges (rnorm's window).
"""
import numpy as np

from layers.norm_reference import denominator, window


def windows(h, w, size):
    """(row slice, column slice) of the window of every pixel, row-major."""
    return [(window(y, size, h), window(x, size, w)) for y in range(h) for x in range(w)]


def mean_diff(x, size):
    h, w = x.shape[2:]
    m = np.empty_like(x)
    for (rows, cols), p in zip(windows(h, w, size), np.ndindex(h, w)):
        m[:, :, p[0], p[1]] = x[:, :, rows, cols].mean(axis=(2, 3))
    return x - m


def forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    return x * denominator(mean_diff(x, size), size, alpha, k) ** -beta


def backward(x, g, size, alpha=1e-4, beta=0.75, k=1.0):
    """dL/dx through all three paths: y = x d^-beta directly, d through the squares of u,
    and u through the window means:

        t_p   = g_p x_p d_p^(-beta-1)
        v_q   = dL/du_q = -2 alpha beta / size^2 * u_q * sum_{p: q in window(p)} t_p
        dx_r  = g_r d_r^-beta + v_r - sum_{q: r in window(q)} v_q / |window(q)|
    """
    h, w = x.shape[2:]
    u = mean_diff(x, size)
    d = denominator(u, size, alpha, k)
    t = g * x * d ** (-beta - 1)
    wins = windows(h, w, size)
    spread = np.zeros_like(x)
    for (rows, cols), (py, px) in zip(wins, np.ndindex(h, w)):
        spread[:, :, rows, cols] += t[:, :, py:py + 1, px:px + 1]
    v = -2 * alpha * beta / size ** 2 * u * spread
    dx = g * d ** -beta + v
    for (rows, cols), (qy, qx) in zip(wins, np.ndindex(h, w)):
        count = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[:, :, rows, cols] -= v[:, :, qy:qy + 1, qx:qx + 1] / count
    return dx
