"""CUDA kernels for eltmax (the twin of cpu.py): a running maximum with the winner's index,
one launch per input, and backward routing dL/dy to each element's winner."""
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for


@cuda.jit
def max_into_kernel(x, index, y, arg):
    """index 0 starts the maximum; later inputs win only where strictly greater."""
    i = cuda.grid(1)
    if i < y.size:
        if index == 0 or x[i] > y[i]:
            y[i] = x[i]
            arg[i] = float32(index)


@cuda.jit
def route_kernel(dy, arg, index, dx):
    i = cuda.grid(1)
    if i < dx.size:
        dx[i] = dy[i] if arg[i] == float32(index) else float32(0.0)


_F = "float32[::1]"
KERNELS = [
    (max_into_kernel, f"void({_F}, int64, {_F}, {_F})"),
    (route_kernel, f"void({_F}, {_F}, int64, {_F})"),
]


class EltMaxCuda(CudaLayer):
    def forward(self, xs, params, train, seed, stream):
        y, arg = self.buffer("y", xs[0].shape), self.buffer("arg", xs[0].shape)
        grid = blocks_for(y.size)
        for i, x in enumerate(xs):
            max_into_kernel[grid, BLOCK, stream](x.reshape(-1), i, y.reshape(-1), arg.reshape(-1))
        self._arg = arg
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        arg = self._arg
        flat = dy.reshape(-1)
        dxs = []
        for i in range(len(self.layer.input_shapes)):
            dx = self.buffer(f"dx{i}", arg.shape)
            route_kernel[blocks_for(flat.size), BLOCK, stream](flat, arg.reshape(-1), i, dx.reshape(-1))
            dxs.append(dx)
        return dxs, {}


def make(layer):
    return EltMaxCuda(layer)
