"""CUDA kernel for eltsum (the twin of cpu.py): y = f(a x + b z), flat.

A sum of k inputs is k - 1 launches of axpby, as the layer's `sum_calls` plans them for the
CPU too (the first writes y, the others add into it; the last applies the fused activation,
keeping the sum in `pre` for abs and square);
backward takes dL/dz through the activation with the neuron layer's kernel, then scales it
once per input whose coefficient is not 1 (a coefficient of 1 hands dL/dz itself back, as
on the CPU) with layers/elementwise_cuda.py's `scale`.
"""
from numba import cuda

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.elementwise_cuda import scale
from layers.neuron.cuda import activate, neuron_backward


@cuda.jit
def axpby_kernel(a, x, b, z, code, pa, pb, keep, y, pre):
    i = cuda.grid(1)
    if i < y.size:
        s = a * x[i] + b * z[i]
        if keep:
            pre[i] = s
        y[i] = activate(code, pa, pb, s)


_F = "float32[::1]"
KERNELS = [
    (axpby_kernel, f"void(float32, {_F}, float32, {_F}, int64, float32, float32, boolean, {_F}, {_F})"),
]


class EltSumCuda(CudaLayer):
    def forward(self, xs, params, train, seed, stream):
        y = self.buffer("y", xs[0].shape)
        out = y.reshape(-1)
        pre = self.buffer("pre", xs[0].shape).reshape(-1) if self.layer.act.needs_input else out
        grid = blocks_for(out.size)
        for args in self.layer.sum_calls([x.reshape(-1) for x in xs], out):
            axpby_kernel[grid, BLOCK, stream](*args, out, pre)
        self._y, self._pre = out, pre
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        layer = self.layer
        dy = dy.reshape((dy.shape[0],) + tuple(layer.output_shape))
        if not layer.act.identity:                 # dL/dz, through the activation
            dz = self.buffer("dz", dy.shape)
            neuron_backward[blocks_for(dy.size), BLOCK, stream](*layer.act.kernel_args(), dy.reshape(-1),
                                                                self._y, self._pre, dz.reshape(-1))
            dy = dz
        return [dy if c == 1.0 else scale(c, dy, self.buffer(f"dx{i}", dy.shape), stream)
                for i, c in enumerate(layer.coefficients)], {}


def make(layer):
    return EltSumCuda(layer)
