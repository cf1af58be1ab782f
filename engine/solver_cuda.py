"""The CUDA twins of the optimizers' update kernels in engine.solver (imported only on CUDA)."""
from numba import cuda


@cuda.jit
def sgd_update(w, v, g, lr, momentum, decay):
    """v = m v - decay lr w - lr g; w += v (the paper's rule), one thread per element."""
    i = cuda.grid(1)
    if i < w.size:
        vi = momentum * v[i] - decay * lr * w[i] - lr * g[i]
        v[i] = vi
        w[i] += vi


KERNELS = [(sgd_update, "void(float32[::1], float32[::1], float32[::1], float32, float32, float32)")]
