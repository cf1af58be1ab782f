"""CUDA kernels for same-map contrast normalisation, cuda-convnet's cnorm (twin of cpu.py).

One thread per element; window sums are taken directly over the clipped window (rnorm's
window: rows y - size//2 .. y - size//2 + size - 1, same columns). Forward: a first
kernel writes u = x - window mean (the mean divides by the in-bounds count), a second
d = k + alpha/size^2 * window sum of u^2 and y = x d^-beta. Backward, as the CPU:
t = g x d^(-beta-1) (rnorm's kernel); v = -2 alpha beta/size^2 * u * (mirrored window sum
of t), stored divided by its window's pixel count as vc; then
dx = g d^-beta + v - (mirrored window sum of vc).
"""
from numba import cuda, float32

from layers.cudabase import BLOCK, blocks_for
from layers.norm_cuda import grad_terms, pow_neg
from layers.rnorm.cuda import RNormCuda


@cuda.jit(device=True, inline="always")
def _span(p, before, after, extent):
    """[lo, hi): positions p - before .. p + after inside [0, extent)."""
    return max(p - before, 0), min(p + after + 1, extent)


@cuda.jit(device=True, inline="always")
def _pixels(yy, xx, h, w, before, after):
    """How many pixels of rows yy - before .. yy + after (same columns) are in the image."""
    r0, r1 = _span(yy, before, after, h)
    c0, c1 = _span(xx, before, after, w)
    return float32((r1 - r0) * (c1 - c0))


@cuda.jit(device=True, inline="always")
def _window_sum(a, base, yy, xx, h, w, before, after, square):
    """Sum of a (or of a^2) over rows yy - before .. yy + after, same columns, clipped."""
    r0, r1 = _span(yy, before, after, h)
    c0, c1 = _span(xx, before, after, w)
    s = float32(0.0)
    for r in range(r0, r1):
        for cc in range(c0, c1):
            v = a[base + r * w + cc]
            s += v * v if square else v
    return s


@cuda.jit(device=True, inline="always")
def _pixel(i, h, w):
    """(row, column, offset of its plane) of flat element i of [N, C, H, W]."""
    xx = i % w
    yy = (i // w) % h
    return yy, xx, i - yy * w - xx


# Every kernel: one thread per element; pre = size//2 and post = size - 1 - pre, the window
# of (y, x) being rows y - pre .. y + post (same columns) and its mirror y - post .. y + pre.
@cuda.jit
def cnorm_mean_diff(x, u, total, h, w, pre, post):
    i = cuda.grid(1)
    if i < total:
        yy, xx, base = _pixel(i, h, w)
        s = _window_sum(x, base, yy, xx, h, w, pre, post, False)
        u[i] = x[i] - s / _pixels(yy, xx, h, w, pre, post)


@cuda.jit
def cnorm_forward(x, u, y, d, total, h, w, pre, post, scale, k, beta, mode):
    i = cuda.grid(1)
    if i < total:
        yy, xx, base = _pixel(i, h, w)
        dd = k + scale * _window_sum(u, base, yy, xx, h, w, pre, post, True)
        d[i] = dd
        y[i] = x[i] * pow_neg(dd, beta, mode)


@cuda.jit
def cnorm_grad_u(u, t, vc, total, h, w, pre, post, coef):
    """vc = v / |own window|, v = dL/du = -coef u (sum of t over the pixels whose windows
    hold this one: the mirrored window)."""
    i = cuda.grid(1)
    if i < total:
        yy, xx, base = _pixel(i, h, w)
        s = _window_sum(t, base, yy, xx, h, w, post, pre, False)
        vc[i] = -coef * u[i] * s / _pixels(yy, xx, h, w, pre, post)


@cuda.jit
def cnorm_backward(g, d, vc, dx, total, h, w, pre, post, beta, mode):
    i = cuda.grid(1)
    if i < total:
        yy, xx, base = _pixel(i, h, w)
        s = _window_sum(vc, base, yy, xx, h, w, post, pre, False)
        v = vc[i] * _pixels(yy, xx, h, w, pre, post)
        dx[i] = g[i] * pow_neg(d[i], beta, mode) + v - s


_F = "float32[::1]"
_I5 = "int64, int64, int64, int64, int64"      # total, h, w, pre, post
KERNELS = [
    (cnorm_mean_diff, f"void({_F}, {_F}, {_I5})"),
    (cnorm_forward, f"void({_F}, {_F}, {_F}, {_F}, {_I5}, float32, float32, float32, int64)"),
    (cnorm_grad_u, f"void({_F}, {_F}, {_F}, {_I5}, float32)"),
    (cnorm_backward, f"void({_F}, {_F}, {_F}, {_F}, {_I5}, float32, int64)"),
]


class CNormCuda(RNormCuda):
    """rnorm's constants (size, scale, k, beta, mode, coef) with cnorm's kernels."""

    def forward(self, x, params, train, seed, stream):
        n, c, h, w = x.shape
        total = n * c * h * w
        pre, post = self.size // 2, self.size - 1 - self.size // 2
        y, u, d = (self.buffer(tag, x.shape) for tag in ("y", "u", "d"))
        grid = blocks_for(total)
        xf, uf = x.reshape(-1), u.reshape(-1)
        cnorm_mean_diff[grid, BLOCK, stream](xf, uf, total, h, w, pre, post)
        cnorm_forward[grid, BLOCK, stream](xf, uf, y.reshape(-1), d.reshape(-1), total, h, w, pre, post,
                                           self.scale, self.k, self.beta, self.mode)
        self._x, self._u, self._d = x, u, d
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        x = self._x
        n, c, h, w = x.shape
        total = n * c * h * w
        pre, post = self.size // 2, self.size - 1 - self.size // 2
        g, d = dy.reshape(-1), self._d.reshape(-1)
        t = self.buffer("t", x.shape).reshape(-1)
        vc = self.buffer("vc", x.shape).reshape(-1)
        dx = self.buffer("dx", x.shape)
        grid = blocks_for(total)
        grad_terms[grid, BLOCK, stream](x.reshape(-1), g, d, t, total, self.beta, self.mode)
        cnorm_grad_u[grid, BLOCK, stream](self._u.reshape(-1), t, vc, total, h, w, pre, post, self.coef)
        cnorm_backward[grid, BLOCK, stream](g, d, vc, dx.reshape(-1), total, h, w, pre, post,
                                            self.beta, self.mode)
        return dx, {}


def make(layer):
    return CNormCuda(layer)
