"""Numba CPU kernel for eltsum (flat float32 arrays); its `scale` is layers/elementwise_cpu.py's,
the gradient of its fused activation the neuron layer's `backward`."""
import numba

from layers.neuron.cpu import activate, activation_kernel, specialised
from layers.threads import chunk_slice, chunks


@numba.njit(inline="always")
def _axpby_chunk(code, args):
    a, x, b, z, pa, pb, keep, y, pre, c = args
    s = chunk_slice(c, x.size)
    xs, zs, ys, pres = x[s], z[s], y[s], pre[s]
    for i in range(xs.size):
        v = a * xs[i] + b * zs[i]
        if keep:
            pres[i] = v
        ys[i] = activate(code, pa, pb, v)


@activation_kernel(split="forward")
def axpby(a, x, b, z, code, pa, pb, keep, y, pre):
    """y = f(a * x + b * z) for the activation (code, pa, pb), with `keep` pre = a * x + b * z
    too (y may be z: each element is read before it is written)."""
    for c in numba.prange(chunks(x.size)):
        specialised(code, _axpby_chunk, (a, x, b, z, pa, pb, keep, y, pre, c))
