"""CUDA kernel for eltsum (the twin of cpu.py): out = a x + b z, flat.

A sum of k inputs is k - 1 launches of axpby (the first writes y, the others add into
it); backward scales dL/dy once per input whose coefficient is not 1 (a coefficient of
1 hands dL/dy itself back, as on the CPU) with layers/elementwise_cuda.py's `scale`.
"""
import numpy as np
from numba import cuda

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.elementwise_cuda import scale


@cuda.jit
def axpby_kernel(a, x, b, z, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + b * z[i]


_F = "float32[::1]"
KERNELS = [
    (axpby_kernel, f"void(float32, {_F}, float32, {_F}, {_F})"),
]


class EltSumCuda(CudaLayer):
    def forward(self, xs, params, train, seed, stream):
        c = self.layer.coefficients
        y = self.buffer("y", xs[0].shape)
        out = y.reshape(-1)
        grid = blocks_for(out.size)
        flat = [x.reshape(-1) for x in xs]
        axpby_kernel[grid, BLOCK, stream](np.float32(c[0]), flat[0], np.float32(c[1]), flat[1], out)
        for ci, x in zip(c[2:], flat[2:]):
            axpby_kernel[grid, BLOCK, stream](np.float32(ci), x, np.float32(1.0), out, out)
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        dy = dy.reshape((dy.shape[0],) + tuple(self.layer.output_shape))
        return [dy if c == 1.0 else scale(c, dy, self.buffer(f"dx{i}", dy.shape), stream)
                for i, c in enumerate(self.layer.coefficients)], {}


def make(layer):
    return EltSumCuda(layer)
