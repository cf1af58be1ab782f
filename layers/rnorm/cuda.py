"""CUDA kernels for same-map response normalisation, cuda-convnet's rnorm (twin of cpu.py).

    d(y, x) = k + alpha/size^2 * sum over the size x size window of x^2,   out = x * d^-beta

The window of (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same columns,
clipped at the edges; the divisor stays size^2 there. One thread per element; the window
sum is taken directly (size^2 float32 multiply-adds from the cache, nothing subtracted).

Backward, exactly as the CPU: dx_i = g_i d_i^-beta - 2 alpha beta/size^2 * x_i * sum over
the pixels j whose window holds i (offsets -(size-1-size//2) .. size//2) of
t_j = g_j x_j d_j^(-beta-1). A first kernel writes t (a scratch buffer), a second gathers.
"""
import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.norm_cuda import grad_terms, pow_neg


@cuda.jit
def rnorm_forward(x, y, d, total, h, w, size, scale, k, beta, mode):
    i = cuda.grid(1)
    if i < total:
        xx = i % w
        t = i // w
        yy = t % h
        base = i - yy * w - xx
        pre = size // 2
        r0 = max(yy - pre, 0)
        r1 = min(yy - pre + size, h)
        c0 = max(xx - pre, 0)
        c1 = min(xx - pre + size, w)
        s = float32(0.0)
        for r in range(r0, r1):
            for cc in range(c0, c1):
                v = x[base + r * w + cc]
                s += v * v
        dd = k + scale * s
        d[i] = dd
        y[i] = x[i] * pow_neg(dd, beta, mode)


@cuda.jit
def rnorm_backward(x, g, d, t, dx, total, h, w, size, coef, beta, mode):
    i = cuda.grid(1)
    if i < total:
        xx = i % w
        q = i // w
        yy = q % h
        base = i - yy * w - xx
        pre = size // 2
        post = size - 1 - pre
        r0 = max(yy - post, 0)
        r1 = min(yy + pre + 1, h)
        c0 = max(xx - post, 0)
        c1 = min(xx + pre + 1, w)
        s = float32(0.0)
        for r in range(r0, r1):
            for cc in range(c0, c1):
                s += t[base + r * w + cc]
        dx[i] = g[i] * pow_neg(d[i], beta, mode) - coef * x[i] * s


_F = "float32[::1]"
KERNELS = [
    (rnorm_forward, f"void({_F}, {_F}, {_F}, int64, int64, int64, int64, float32, float32, float32, int64)"),
    (rnorm_backward, f"void({_F}, {_F}, {_F}, {_F}, {_F}, int64, int64, int64, int64, float32, float32, int64)"),
]


class RNormCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.size = int(layer.size)
        self.mode = int(layer.beta_code)
        self.scale = np.float32(float(layer.alpha) / (self.size * self.size))
        self.k = np.float32(layer.k)
        self.beta = np.float32(layer.beta)
        self.coef = np.float32(2.0 * float(layer.alpha) * float(layer.beta) / (self.size * self.size))
        self._x = self._d = None

    def forward(self, x, params, train, seed, stream):
        n, c, h, w = x.shape
        y = self.buffer("y", x.shape)
        d = self.buffer("d", x.shape)
        total = n * c * h * w
        rnorm_forward[blocks_for(total), BLOCK, stream](
            x.reshape(-1), y.reshape(-1), d.reshape(-1), total, h, w, self.size,
            self.scale, self.k, self.beta, self.mode)
        self._x, self._d = x, d
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        x = self._x
        n, c, h, w = x.shape
        total = n * c * h * w
        xf, g, d = x.reshape(-1), dy.reshape(-1), self._d.reshape(-1)
        t = self.buffer("t", x.shape).reshape(-1)
        dx = self.buffer("dx", x.shape)
        grid = blocks_for(total)
        grad_terms[grid, BLOCK, stream](xf, g, d, t, total, self.beta, self.mode)
        rnorm_backward[grid, BLOCK, stream](xf, g, d, t, dx.reshape(-1), total, h, w, self.size,
                                            self.coef, self.beta, self.mode)
        return dx, {}


def make(layer):
    return RNormCuda(layer)
