"""Numba CPU kernels for the element-wise activations (also fused into conv, fc, pool)."""
import numba
import numpy as np

from layers import threads  # noqa: F401  (threading layer chosen before any kernel runs)

# Function codes shared by every kernel that fuses an activation.
CODES = {None: 0, "linear": 0, "relu": 1, "tanh": 2, "logistic": 3, "abs": 4}
NEEDS_INPUT = {4}   # abs: its gradient needs the sign of the input, not just the output


@numba.njit(inline="always")
def act(code, a):
    if code == 1:
        return a if a > 0.0 else np.float32(0.0)
    if code == 2:
        return np.tanh(a)
    if code == 3:
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-a))
    if code == 4:
        return abs(a)
    return a


@numba.njit(inline="always")
def act_grad(code, g, y, a):
    """dL/da from dL/dy = g, the output y and (for abs) the input a."""
    if code == 1:
        return g if y > 0.0 else np.float32(0.0)
    if code == 2:
        return g * (np.float32(1.0) - y * y)
    if code == 3:
        return g * y * (np.float32(1.0) - y)
    if code == 4:
        if a > 0.0:
            return g
        if a < 0.0:
            return -g
        return np.float32(0.0)
    return g


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def forward(code, a, out):
    """out = f(a), both flat float32 (may alias)."""
    n = a.size
    chunk = 16384
    for c in numba.prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            out[i] = act(code, a[i])


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def backward(code, g, y, a, out):
    """out = dL/da, flat float32; `a` is only read for codes in NEEDS_INPUT."""
    n = g.size
    chunk = 16384
    for c in numba.prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            out[i] = act_grad(code, g[i], y[i], a[i] if code == 4 else np.float32(0.0))
