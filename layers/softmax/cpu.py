"""Numba CPU kernels for the row softmax, its cross-entropy gradient and its Jacobian."""
import numba
import numpy as np

from layers import threads


@threads.kernel
def forward(x, p, lse):
    """p = softmax(x) row-wise; lse[r] = log(sum(exp(x[r]))) in float64 (for the loss)."""
    n, d = x.shape
    for r in numba.prange(n):
        mx = x[r, 0]
        for c in range(1, d):
            if x[r, c] > mx:
                mx = x[r, c]
        s = 0.0
        for c in range(d):
            e = np.exp(x[r, c] - mx)
            p[r, c] = e
            s += e
        inv = np.float32(1.0 / s)
        for c in range(d):
            p[r, c] *= inv
        lse[r] = np.float64(mx) + np.log(s)


@threads.kernel(fastmath=False)
def xent(x, lse, labels, p, dx):
    """Mean cross-entropy (float64) and dx = (p - onehot(labels)) / N."""
    n, d = p.shape
    inv = np.float32(1.0 / n)
    losses = np.empty(n, np.float64)
    for r in numba.prange(n):
        for c in range(d):
            dx[r, c] = p[r, c] * inv
        k = labels[r]
        dx[r, k] -= inv
        losses[r] = lse[r] - np.float64(x[r, k])
    return losses.sum() / n


@threads.kernel(fastmath=False)
def xent_smoothed(x, lse, labels, p, dx, smoothing):
    """Cross-entropy against (1 - e) onehot + e / D, e = smoothing (float64), and
    dx = (p - target) / N."""
    n, d = p.shape
    inv = 1.0 / n
    off = np.float32(smoothing / d * inv)
    hit = np.float32((1.0 - smoothing) * inv)
    inv32 = np.float32(inv)
    losses = np.empty(n, np.float64)
    for r in numba.prange(n):
        total = 0.0
        for c in range(d):
            dx[r, c] = p[r, c] * inv32 - off
            total += np.float64(x[r, c])
        k = labels[r]
        dx[r, k] -= hit
        losses[r] = lse[r] - (1.0 - smoothing) * np.float64(x[r, k]) - smoothing * total / d
    return losses.sum() / n


@threads.kernel
def backward(p, dy, dx):
    """dx = p * (dy - sum(dy * p)) row-wise."""
    n, d = p.shape
    for r in numba.prange(n):
        s = 0.0
        for c in range(d):
            s += np.float64(dy[r, c]) * p[r, c]
        s32 = np.float32(s)
        for c in range(d):
            dx[r, c] = p[r, c] * (dy[r, c] - s32)
