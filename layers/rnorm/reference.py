"""Plain NumPy same-map response normalisation (cuda-convnet's `rnorm`): the definition the
kernels are checked against.

    d(y, x) = k + alpha / size^2 * sum over the size x size window of a^2,   b = a * d^-beta

The window of pixel (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same for
columns, clipped at the image edges; the divisor stays size^2 at the edges.
"""
from layers.norm_reference import denominator, window


def forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    return x * denominator(x, size, alpha, k) ** -beta


def backward(x, g, size, alpha=1e-4, beta=0.75, k=1.0):
    """dL/da_i = g_i d_i^-beta - 2 alpha beta / size^2 * a_i * sum_{j: i in window(j)} g_j a_j d_j^(-beta-1)."""
    h, w = x.shape[2:]
    d = denominator(x, size, alpha, k)
    t = g * x * d ** (-beta - 1)
    dx = g * d ** -beta
    coef = 2 * alpha * beta / size ** 2
    for y in range(h):
        for xx in range(w):
            rows, cols = window(y, size, h), window(xx, size, w)
            dx[:, :, rows, cols] -= coef * x[:, :, rows, cols] * t[:, :, y:y + 1, xx:xx + 1]
    return dx
