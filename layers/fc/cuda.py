"""CUDA fc: y = f(x @ W^T + b) with the tiled GEMM, then bias + fused activation in place.

Backward: dz = dL/d(pre-activation) and per-row-chunk partial bias sums in one kernel
(one thread per column, coalesced; the chunks are then summed in order: deterministic,
no atomics), dW = dz^T @ x, dx = dz @ W.

Buffers (reused while shapes hold): y, pre (abs, square only), dz, dbpart, dbias, dweight, dx and
the split-K scratches (one per product); the returned y, dx and gradients are these buffers.
"""
from numba import cuda, float32

from layers.cudabase import CudaLayer
from layers.cudagemm import EBLOCK, blocks_for, gemm, sum_cols
from layers.neuron.cuda import activate, activate_grad, uses_input

ROWS_PER_CHUNK = 32        # batch rows per thread in the gradient gather


@cuda.jit
def bias_act_kernel(y, bias, code, pa, pb, keep, pre):
    """y[r, c] = f(y[r, c] + bias[c]) in place for the activation (code, pa, pb);
    keep != 0: pre[r, c] = the sum."""
    t = cuda.grid(1)
    n = y.shape[0]
    m = y.shape[1]
    if t < n * m:
        r = t // m
        c = t - r * m
        a = y[r, c] + bias[c]
        if keep != 0:
            pre[r, c] = a
        y[r, c] = activate(code, pa, pb, a)


@cuda.jit
def grad_gather_kernel(dy, y, pre, code, pa, pb, dz, partial):
    """Thread (column c, row chunk): dz[r, c] = activate_grad(...) for its rows and
    partial[chunk, c] = their sum."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    chunk = cuda.blockIdx.y
    n = dy.shape[0]
    m = dy.shape[1]
    if c < m:
        r0 = chunk * ROWS_PER_CHUNK
        r1 = min(n, r0 + ROWS_PER_CHUNK)
        acc = float32(0.0)
        for r in range(r0, r1):
            a = pre[r, c] if uses_input(code) else float32(0.0)
            g = activate_grad(code, pa, pb, dy[r, c], y[r, c], a)
            dz[r, c] = g
            acc += g
        partial[chunk, c] = acc


KERNELS = [
    (bias_act_kernel, "void(float32[:, ::1], float32[::1], int64, float32, float32, int64, "
                      "float32[:, ::1])"),
    (grad_gather_kernel, "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], "
                         "int64, float32, float32, float32[:, ::1], float32[:, ::1])"),
]


class FCCuda(CudaLayer):
    def forward(self, x, params, train, seed, stream):
        lay = self.layer
        n = x.shape[0]
        if x.ndim != 2:
            x = x.reshape(n, x.size // n)
        d, m = lay.d, lay.cfg["outputs"]
        if x.shape[1] != d:
            raise ValueError(f"fc '{lay.name}': input has {x.shape[1]} features, expected {d}")
        y = self.buffer("y", (n, m))
        # y [n, m] = x [n, d] @ W^T  (W stored [m, d])
        gemm(stream, n, m, d, x, params["weight"], y, trans_b=True, ldb=d,
             scratch=lambda shape: self.buffer("splitk_y", shape))
        keep = lay.act.needs_input
        pre = self.buffer("pre", (n, m)) if keep else y
        bias_act_kernel[blocks_for(n * m), EBLOCK, stream](
            y, params["bias"], *lay.act.kernel_args(), 1 if keep else 0, pre)
        self._x, self._y, self._pre = x, y, pre
        return y

    def backward(self, dy, params, need_dx, stream):
        lay = self.layer
        n, m = self._y.shape
        d = lay.d
        dy = dy.reshape(n, m)
        dz = self.buffer("dz", (n, m))
        chunks = -(-n // ROWS_PER_CHUNK)
        partial = self.buffer("dbpart", (chunks, m))
        grad_gather_kernel[(blocks_for(m), chunks), EBLOCK, stream](
            dy, self._y, self._pre, *lay.act.kernel_args(), dz, partial)
        db = self.buffer("dbias", (m,))
        sum_cols(partial, db, stream)
        dw = self.buffer("dweight", (m, d))
        # dW [m, d] = dz^T (dz stored [n, m]) @ x [n, d]
        gemm(stream, m, d, n, dz, self._x, dw, trans_a=True, lda=m,
             scratch=lambda shape: self.buffer("splitk_dw", shape))
        grads = {"weight": dw, "bias": db}
        if not need_dx:
            return None, grads
        dx = self.buffer("dx", (n, d))
        # dx [n, d] = dz [n, m] @ W [m, d]
        gemm(stream, n, d, m, dz, params["weight"], dx,
             scratch=lambda shape: self.buffer("splitk_dx", shape))
        return dx, grads


def make(layer):
    return FCCuda(layer)
