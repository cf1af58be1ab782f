"""CUDA kernels for cross-map response normalisation (the twin of cpu.py).

    d_c = k + alpha/size * sum_{c' in window(c)} x_{c'}^2,      y_c = x_c * d_c^-beta

window(c) = maps c - size//2 .. c - size//2 + size - 1, clipped to [0, C). `groups` splits
the channels into equal blocks normalised separately: the CPU views [N, C, H, W] as
[N*groups, C/groups, H, W], which is the same memory, so the kernels simply run on
planes = N*groups images of C/groups maps.

One thread per (image, pixel) walks the maps. Each window sum is taken directly (size
float32 multiply-adds, reads that hit the cache) rather than as a running sum, so nothing
is subtracted and the sum cannot drift or go negative in float32. Backward needs, for
each map i, the sum over the maps j whose window holds i (j = i - (size-1-size//2) ..
i + size//2) of t_j = g_j x_j d_j^(-beta-1); t_j is recomputed per window rather than
stored, so backward needs no scratch buffer the size of the activations.

d^-beta: beta = 0.75, 0.5 and 1 use square roots / a division instead of powf
(layers/norm_cuda.py's `pow_neg`, shared with rnorm and cnorm).
"""
import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.norm_cuda import pow_neg


@cuda.jit
def cmr_forward(x, y, d, planes, c, hw, size, scale, k, beta, mode):
    """Flat [planes, c, hw] arrays; one thread per (plane, pixel)."""
    i = cuda.grid(1)
    if i < planes * hw:
        p = i // hw
        base = p * c * hw + (i - p * hw)
        pre = size // 2
        for m in range(c):
            lo = max(m - pre, 0)
            hi = min(m - pre + size, c)
            s = float32(0.0)
            for j in range(lo, hi):
                v = x[base + j * hw]
                s += v * v
            dd = k + scale * s
            o = base + m * hw
            d[o] = dd
            y[o] = x[o] * pow_neg(dd, beta, mode)


@cuda.jit
def cmr_backward(x, g, d, dx, planes, c, hw, size, coef, beta, mode):
    """dx_i = g_i d_i^-beta - coef * x_i * sum_{j: i in window(j)} g_j x_j d_j^(-beta-1),
    coef = 2 alpha beta / size."""
    i = cuda.grid(1)
    if i < planes * hw:
        p = i // hw
        base = p * c * hw + (i - p * hw)
        pre = size // 2
        post = size - 1 - pre
        for m in range(c):
            lo = max(m - post, 0)
            hi = min(m + pre + 1, c)
            s = float32(0.0)
            for j in range(lo, hi):
                o = base + j * hw
                dj = d[o]
                s += g[o] * pow_neg(dj, beta, mode) * x[o] / dj
            o = base + m * hw
            dx[o] = g[o] * pow_neg(d[o], beta, mode) - coef * x[o] * s


_F = "float32[::1]"
KERNELS = [
    (cmr_forward, f"void({_F}, {_F}, {_F}, int64, int64, int64, int64, float32, float32, float32, int64)"),
    (cmr_backward, f"void({_F}, {_F}, {_F}, {_F}, int64, int64, int64, int64, float32, float32, int64)"),
]


class CMRNormCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.groups = int(layer.groups)
        self.size = int(layer.size)
        self.mode = int(layer.beta_code)
        self.scale = np.float32(float(layer.alpha) / self.size)
        self.k = np.float32(layer.k)
        self.beta = np.float32(layer.beta)
        self.coef = np.float32(2.0 * float(layer.alpha) * float(layer.beta) / self.size)
        self._x = self._d = None

    def _dims(self, shape):
        n, c, h, w = shape
        return n * self.groups, c // self.groups, h * w

    def forward(self, x, params, train, seed, stream):
        planes, c, hw = self._dims(x.shape)
        y = self.buffer("y", x.shape)
        d = self.buffer("d", x.shape)
        cmr_forward[blocks_for(planes * hw), BLOCK, stream](
            x.reshape(-1), y.reshape(-1), d.reshape(-1), planes, c, hw, self.size,
            self.scale, self.k, self.beta, self.mode)
        self._x, self._d = x, d
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        x = self._x
        planes, c, hw = self._dims(x.shape)
        dx = self.buffer("dx", x.shape)
        cmr_backward[blocks_for(planes * hw), BLOCK, stream](
            x.reshape(-1), dy.reshape(-1), self._d.reshape(-1), dx.reshape(-1), planes, c, hw,
            self.size, self.coef, self.beta, self.mode)
        return dx, {}


def make(layer):
    return CMRNormCuda(layer)
