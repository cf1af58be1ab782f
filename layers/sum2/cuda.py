"""CUDA sum-of-squares cost (the twin of cpu.py).

cost: `squares_and_grad` writes dx = 2 coeff x / N over a grid-stride loop and one partial
sum of x^2 per block (a shared-memory tree); `sum_partials`, one block, adds them in a
fixed order into loss[0] and scales by coeff / N: deterministic, no atomics, no host copy.
"""
import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, block_sum, blocks_for

MAX_BLOCKS = 256      # partial sums at most (each thread then loops over the rest)


@cuda.jit
def squares_and_grad(x, scale, dx, partial):
    """dx = scale * x (flat); partial[block] = this block's share of sum(x^2)."""
    sh = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    acc = float32(0.0)
    i = cuda.grid(1)
    while i < x.size:
        v = x[i]
        dx[i] = scale * v
        acc += v * v
        i += cuda.gridsize(1)
    sh[tid] = acc
    total = block_sum(sh, tid, BLOCK)
    if tid == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit
def sum_partials(partial, scale, loss):
    """One block: loss[0] = scale * sum(partial)."""
    sh = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    acc = float32(0.0)
    for j in range(tid, partial.size, BLOCK):
        acc += partial[j]
    sh[tid] = acc
    total = block_sum(sh, tid, BLOCK)
    if tid == 0:
        loss[0] = scale * total


KERNELS = [
    (squares_and_grad, "void(float32[::1], float32, float32[::1], float32[::1])"),
    (sum_partials, "void(float32[::1], float32, float32[::1])"),
]


class Sum2Cuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self._x = None

    def forward(self, x, params, train, seed, stream):
        self._x = x
        return x

    def cost(self, labels, stream):
        """labels are ignored (None on a CUDA step: check_labels returns None)."""
        if self._x is None:
            raise RuntimeError(f"sum2 '{self.name}': cost() before forward()")
        x = self._x
        n = x.shape[0]
        coeff = self.layer.coeff
        blocks = min(MAX_BLOCKS, blocks_for(x.size))
        partial = self.buffer("partial", (blocks,))
        dx = self.buffer("dx", x.shape)
        loss = self.buffer("loss", (1,))
        squares_and_grad[blocks, BLOCK, stream](x.reshape(-1), np.float32(2.0 * coeff / n),
                                                dx.reshape(-1), partial)
        sum_partials[1, BLOCK, stream](partial, np.float32(coeff / n), loss)
        return loss, dx


def make(layer):
    return Sum2Cuda(layer)
