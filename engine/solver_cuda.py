"""The CUDA twins of the optimizers' update kernels in engine.solver (imported only on CUDA).

The backend launches each with cudabase.BLOCK threads per block over the first array."""
import math

from numba import cuda, float32

from layers.cudabase import BLOCK, block_sum


@cuda.jit
def sgd_update(w, v, g, lr, momentum, decay):
    """v = m v - decay lr w - lr g; w += v (the paper's rule), one thread per element."""
    i = cuda.grid(1)
    if i < w.size:
        vi = momentum * v[i] - decay * lr * w[i] - lr * g[i]
        v[i] = vi
        w[i] += vi


@cuda.jit
def nesterov_update(w, v, g, lr, momentum, decay):
    """step = lr (g + decay w); v = m v - step; w += m v - step."""
    i = cuda.grid(1)
    if i < w.size:
        step = lr * (g[i] + decay * w[i])
        vi = momentum * v[i] - step
        v[i] = vi
        w[i] += momentum * vi - step


@cuda.jit
def adam_update(w, m, s, g, step_size, beta1, beta2, one_minus_beta1, one_minus_beta2, bc2_sqrt, eps,
                l2, shrink):
    """Adam (l2 = wd, shrink = 1) or AdamW (l2 = 0, shrink = 1 - lr wd), one thread per element."""
    i = cuda.grid(1)
    if i < w.size:
        wi = w[i] * shrink
        gi = g[i] + l2 * wi
        mi = beta1 * m[i] + one_minus_beta1 * gi
        si = beta2 * s[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        s[i] = si
        w[i] = wi - step_size * mi / (math.sqrt(si) / bc2_sqrt + eps)


@cuda.jit
def sum_squares(g, partials):
    """partials[j] = sum of g^2 over the j-th of partials.size equal chunks of g, as the CPU
    kernel splits it: block b sums chunks b, b + gridDim, ... (a fixed order: reproducible)."""
    tid = cuda.threadIdx.x
    n, p = g.size, partials.size
    chunk = (n + p - 1) // p
    sh = cuda.shared.array(BLOCK, float32)
    j = cuda.blockIdx.x
    while j < p:                      # the same j for the whole block: syncthreads is safe
        acc = float32(0.0)
        for i in range(j * chunk + tid, min(n, (j + 1) * chunk), BLOCK):
            acc += g[i] * g[i]
        sh[tid] = acc
        block_sum(sh, tid, BLOCK)
        if tid == 0:
            partials[j] = sh[0]
        cuda.syncthreads()            # sh[0] read before the next chunk overwrites it
        j += cuda.gridDim.x


@cuda.jit
def scale_grad(g, factor):
    i = cuda.grid(1)
    if i < g.size:
        g[i] *= factor


_V = "float32[::1]"
KERNELS = [
    (sgd_update, "void(float32[::1], float32[::1], float32[::1], float32, float32, float32)"),
    (nesterov_update, f"void({_V}, {_V}, {_V}, float32, float32, float32)"),
    (adam_update, f"void({_V}, {_V}, {_V}, {_V}, {', '.join(['float32'] * 9)})"),
    (sum_squares, f"void({_V}, {_V})"),
    (scale_grad, f"void({_V}, float32)"),
]
