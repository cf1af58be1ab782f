"""Numba CPU kernel for eltsum (flat float32 arrays); its `scale` is layers/elementwise_cpu.py's,
the gradient of its fused activation the neuron layer's `backward`."""
import numba

from layers.neuron.cpu import activate, activation_kernel, specialised

CHUNK = 16384


@numba.njit(inline="always")
def _axpby_chunk(code, args):
    a, x, b, z, pa, pb, keep, y, pre, c = args
    for i in range(c * CHUNK, min(x.size, (c + 1) * CHUNK)):
        s = a * x[i] + b * z[i]
        if keep:
            pre[i] = s
        y[i] = activate(code, pa, pb, s)


@activation_kernel(split="forward")
def axpby(a, x, b, z, code, pa, pb, keep, y, pre):
    """y = f(a * x + b * z) for the activation (code, pa, pb), with `keep` pre = a * x + b * z
    too (y may be z: each element is read before it is written)."""
    for c in numba.prange((x.size + CHUNK - 1) // CHUNK):
        specialised(code, _axpby_chunk, (a, x, b, z, pa, pb, keep, y, pre, c))
