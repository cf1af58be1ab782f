"""CUDA kernels for the row softmax, its cross-entropy cost and its Jacobian (twin of cpu.py).

forward: one block of ROW_THREADS threads per row: a shared-memory max, then the sum of
exp(x - max) (also kept as lse = max + log(sum) for the loss), then the scaling.
cost(labels): the per-row losses lse[r] - x[r, label] summed by one block and divided by
N into a (1,) float32 device array (a label outside [0, D) makes the loss NaN: labels are
not copied back to be checked), and dx = (p - onehot) / N, one thread per element.
With label_smoothing e: the _smoothed twins, loss (1 - e)(lse - x_label) + e (lse - mean(x))
and dx = (p - (1 - e) onehot - e / D) / N.
backward(dy): the plain softmax JVP dx = p * (dy - sum(dy * p)), one block per row.
"""
import math

import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, block_sum, blocks_for

ROW_THREADS = 128    # threads per row (a power of two: the tree reductions halve it)


@cuda.jit(device=True, inline="always")
def _reduce_max(sh, tid):
    """sh[0] = max(sh[:ROW_THREADS]); every thread must call it (it synchronises)."""
    cuda.syncthreads()
    step = ROW_THREADS // 2
    while step > 0:
        if tid < step:
            sh[tid] = max(sh[tid], sh[tid + step])
        cuda.syncthreads()
        step //= 2


@cuda.jit
def softmax_forward(x, p, lse):
    """Grid: one block per row, ROW_THREADS threads. p = softmax(x); lse = log sum exp(x)."""
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    d = x.shape[1]
    sh = cuda.shared.array(ROW_THREADS, float32)
    m = x[r, 0]
    for c in range(tid, d, ROW_THREADS):
        m = max(m, x[r, c])
    sh[tid] = m
    _reduce_max(sh, tid)
    mx = sh[0]
    cuda.syncthreads()            # everyone has read the max before sh is reused
    s = float32(0.0)
    for c in range(tid, d, ROW_THREADS):
        e = math.exp(x[r, c] - mx)
        p[r, c] = e
        s += e
    sh[tid] = s
    block_sum(sh, tid, ROW_THREADS)
    total = sh[0]
    inv = float32(1.0) / total
    for c in range(tid, d, ROW_THREADS):     # each thread rescales what it wrote
        p[r, c] *= inv
    if tid == 0:
        lse[r] = mx + math.log(total)


@cuda.jit
def softmax_xent_loss(x, lse, labels, loss):
    """One block of ROW_THREADS threads: loss[0] = mean over rows of lse[r] - x[r, label]."""
    tid = cuda.threadIdx.x
    n, d = x.shape
    sh = cuda.shared.array(ROW_THREADS, float32)
    s = float32(0.0)
    for r in range(tid, n, ROW_THREADS):
        k = labels[r]
        if k >= 0 and k < d:
            s += lse[r] - x[r, k]
        else:
            s += float32(math.nan)
    sh[tid] = s
    block_sum(sh, tid, ROW_THREADS)
    if tid == 0:
        loss[0] = sh[0] / float32(n)


@cuda.jit
def softmax_xent_grad(p, labels, dx, inv):
    """dx = (p - onehot(labels)) * inv, inv = 1/N; one thread per element."""
    i = cuda.grid(1)
    n, d = p.shape
    if i < n * d:
        r = i // d
        c = i - r * d
        v = p[r, c] * inv
        if c == labels[r]:
            v -= inv
        dx[r, c] = v


@cuda.jit
def softmax_xent_loss_smoothed(x, lse, labels, loss, smoothing):
    """softmax_xent_loss against the smoothed target: row loss lse - (1-e) x[label] - e mean(x)."""
    tid = cuda.threadIdx.x
    n, d = x.shape
    sh = cuda.shared.array(ROW_THREADS, float32)
    s = float32(0.0)
    for r in range(tid, n, ROW_THREADS):
        k = labels[r]
        if k >= 0 and k < d:
            row = float32(0.0)
            for c in range(d):
                row += x[r, c]
            s += lse[r] - (float32(1.0) - smoothing) * x[r, k] - smoothing * row / float32(d)
        else:
            s += float32(math.nan)
    sh[tid] = s
    block_sum(sh, tid, ROW_THREADS)
    if tid == 0:
        loss[0] = sh[0] / float32(n)


@cuda.jit
def softmax_xent_grad_smoothed(p, labels, dx, inv, off, hit):
    """dx = p * inv - off - (hit at the label): inv = 1/N, off = e/(D N), hit = (1-e)/N."""
    i = cuda.grid(1)
    n, d = p.shape
    if i < n * d:
        r = i // d
        c = i - r * d
        v = p[r, c] * inv - off
        if c == labels[r]:
            v -= hit
        dx[r, c] = v


@cuda.jit
def softmax_backward(p, dy, dx):
    """Grid: one block per row. dx = p * (dy - sum(dy * p))."""
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    d = p.shape[1]
    sh = cuda.shared.array(ROW_THREADS, float32)
    s = float32(0.0)
    for c in range(tid, d, ROW_THREADS):
        s += dy[r, c] * p[r, c]
    sh[tid] = s
    block_sum(sh, tid, ROW_THREADS)
    s = sh[0]
    for c in range(tid, d, ROW_THREADS):
        dx[r, c] = p[r, c] * (dy[r, c] - s)


_F2 = "float32[:, ::1]"
KERNELS = [
    (softmax_forward, f"void({_F2}, {_F2}, float32[::1])"),
    (softmax_xent_loss, f"void({_F2}, float32[::1], int32[::1], float32[::1])"),
    (softmax_xent_grad, f"void({_F2}, int32[::1], {_F2}, float32)"),
    (softmax_xent_loss_smoothed, f"void({_F2}, float32[::1], int32[::1], float32[::1], float32)"),
    (softmax_xent_grad_smoothed, f"void({_F2}, int32[::1], {_F2}, float32, float32, float32)"),
    (softmax_backward, f"void({_F2}, {_F2}, {_F2})"),
]


class SoftmaxCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self._x = self._p = self._lse = None

    def forward(self, x, params, train, seed, stream):
        n = x.shape[0]
        x = x.reshape(n, -1)
        d = x.shape[1]
        p = self.buffer("p", (n, d))
        lse = self.buffer("lse", (n,))
        softmax_forward[n, ROW_THREADS, stream](x, p, lse)
        self._x, self._p, self._lse = x, p, lse
        return p

    def cost(self, labels, stream):
        if self._p is None:
            raise RuntimeError(f"softmax '{self.name}': cost() before forward()")
        n, d = self._p.shape
        if labels.shape != (n,):
            raise ValueError(f"softmax '{self.name}': got labels of shape {labels.shape} for a batch of {n}")
        loss = self.buffer("loss", (1,))
        dx = self.buffer("dx", (n, d))
        e = self.layer.label_smoothing
        if e:
            softmax_xent_loss_smoothed[1, ROW_THREADS, stream](self._x, self._lse, labels, loss, np.float32(e))
            softmax_xent_grad_smoothed[blocks_for(n * d), BLOCK, stream](
                self._p, labels, dx, np.float32(1.0 / n), np.float32(e / d / n), np.float32((1.0 - e) / n))
        else:
            softmax_xent_loss[1, ROW_THREADS, stream](self._x, self._lse, labels, loss)
            softmax_xent_grad[blocks_for(n * d), BLOCK, stream](self._p, labels, dx, np.float32(1.0 / n))
        return loss, dx

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        n, d = self._p.shape
        dx = self.buffer("dx", (n, d))
        softmax_backward[n, ROW_THREADS, stream](self._p, dy.reshape(n, d), dx)
        return dx, {}


def make(layer):
    return SoftmaxCuda(layer)
