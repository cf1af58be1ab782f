"""CUDA helpers shared by the response normalisations (cmrnorm, rnorm, cnorm).

d^-beta: beta = 0.75, 0.5 and 1 use square roots / a division instead of powf (`mode`
from layers.norm_cpu.beta_mode).
"""
import math

from numba import cuda, float32


@cuda.jit(device=True, inline="always")
def pow_neg(d, beta, mode):
    """d ** -beta for float32 d > 0."""
    if mode == 1:
        r = float32(1.0) / math.sqrt(d)
        return r * math.sqrt(r)
    if mode == 2:
        return float32(1.0) / math.sqrt(d)
    if mode == 3:
        return float32(1.0) / d
    return math.pow(d, -beta)


@cuda.jit
def grad_terms(x, g, d, t, total, beta, mode):
    """t = g x d^(-beta-1), the terms the windows sum."""
    i = cuda.grid(1)
    if i < total:
        dd = d[i]
        t[i] = g[i] * pow_neg(dd, beta, mode) * x[i] / dd


_F = "float32[::1]"
KERNELS = [(grad_terms, f"void({_F}, {_F}, {_F}, {_F}, int64, float32, int64)")]
