"""The Winograd path of conv: stride-1 3x3 and 5x5 convolutions as F(2x2, 3x3) and F(2x2,
5x5) (wino_tiles: n x n input tiles, n = size + 1).

Per chunk of rows of 2x2-output tiles: the input tiles' transforms V [n^2, C, T] (Numba),
n^2 GEMMs M[p] = U[p] V[p] with U = G g G^T [n^2, K, C] (numpy's BLAS, batched), the
outputs' transforms A^T M A with bias and activation into y (Numba). dx is the same
convolution of the padded gradient with the flipped, transposed filters; dW sums (A e A^T)
V^T over the chunks' tiles (n^2 GEMMs again) and ends as G^T M G. The padded images and
gradients are de-interleaved planes (each row its even columns, then its odd ones), so a
tile row's columns 2t + j are unit-stride streams for the transforms.
"""
import numba
import numpy as np

from layers import threads
from layers.conv.wino_tiles import SCHEMES, split_pairs, wino_grad, wino_input, wino_output
from layers.fma_tiles import LANES
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised

SIZES = (3, 5)


def deinterleaved(column, half):
    """Where a padded row's `column` sits once the row is split into its even columns, then
    its odd ones, `half` apart (split_images, grad_split; the direct path's stride-2 phases)."""
    return (column % 2) * half + column // 2


_deinterleaved = numba.njit(inline="always")(deinterleaved)     # the same, inside the kernels


def fits(size, stride, padding, groups, padding_end):
    """Whether a convolution can take this path: 3x3 or 5x5, stride 1, one group, padding
    below the size."""
    return size in SIZES and stride == 1 and groups == 1 and padding < size and padding_end == 0


def g_matrix(size):
    """G [n, size] of the size's scheme, float64 (the weights' transforms sum in float64)."""
    return np.array(SCHEMES[size + 1]["G"], np.float64)


@threads.kernel
def transform_weights(w, g, out):
    """out [n^2, K, C] = U = G w G^T of weights w [K, C, r, r] (g: G [n, r]; element p =
    n*a + b), summed in float64."""
    k_out, c_in, r, n = w.shape[0], w.shape[1], w.shape[2], g.shape[0]
    for k in numba.prange(k_out):
        t = np.empty((n, r), np.float64)
        for c in range(c_in):
            wk = w[k, c]
            for a in range(n):                      # G w
                for j in range(r):
                    acc = 0.0
                    for i in range(r):
                        acc += g[a, i] * wk[i, j]
                    t[a, j] = acc
            for a in range(n):                      # (G w) G^T
                for b in range(n):
                    acc = 0.0
                    for j in range(r):
                        acc += t[a, j] * g[b, j]
                    out[n * a + b, k, c] = acc
    return out


@threads.kernel
def weight_gradient(m, g, dw):
    """dw [K, C*r*r] = G^T M G of the summed products m [n^2, K, C] (g: G [n, r]; element p =
    n*a + b), summed in float64."""
    n, k_out, c_in, r = g.shape[0], m.shape[1], m.shape[2], g.shape[1]
    for k in numba.prange(k_out):
        t = np.empty((n, r), np.float64)
        for c in range(c_in):
            for a in range(n):                      # M G
                for j in range(r):
                    acc = 0.0
                    for b in range(n):
                        acc += m[n * a + b, k, c] * g[b, j]
                    t[a, j] = acc
            for i in range(r):                      # G^T (M G)
                for j in range(r):
                    acc = 0.0
                    for a in range(n):
                        acc += g[a, i] * t[a, j]
                    dw[k, (c * r + i) * r + j] = acc


class Geometry:
    """Where a stride-1 size x size convolution (size 3 or 5) with padding p < size keeps
    things on this path. Output oh x ow in th x tw tiles of 2x2, each reading n x n inputs
    (n = size + 1); x padded into planes of hp rows of 2*half columns (even columns, then
    odd); the gradient of the outputs into planes of hd rows of 2*half_d, its padding a =
    size - 1 - p (dx is the full convolution), at rows and columns a.. (dW reads it there).
    dx's tiles cover h x w in thd x twd. cols / cols_d: where a tile's n columns start in
    a padded row (2t + j, de-interleaved); taps: range(n), the kernels' tile side; g: G."""

    def __init__(self, h, w, oh, ow, p, size=3):
        halo = size - 1
        self.h, self.w, self.oh, self.ow, self.p, self.a = h, w, oh, ow, p, halo - p
        self.n = size + 1
        self.th, self.tw = -(-oh // 2), -(-ow // 2)
        self.thd, self.twd = -(-h // 2), -(-w // 2)
        self.hp, self.half = 2 * self.th + halo, self.tw + halo // 2
        self.hd = max(2 * self.thd + halo, self.a + 2 * self.th, oh + self.a + 1)
        self.half_d = max(self.twd + halo // 2, -(-(self.a + 2 * self.tw) // 2), -(-(ow + self.a) // 2) + 1)
        self.cols = tuple(deinterleaved(j, self.half) for j in range(self.n))
        self.cols_d = tuple(deinterleaved(j, self.half_d) for j in range(self.n))
        self.taps = tuple(range(self.n))
        self.g = g_matrix(size)

    def plane(self):
        return self.hp * 2 * self.half

    def plane_d(self):
        return self.hd * 2 * self.half_d

    def slack(self):
        """Floats past a buffer's last plane that the transforms' last vectors read."""
        return self.n * (2 * max(self.half, self.half_d)) + self.n * LANES


@numba.njit(inline="always")
def split_row(src, w, p, half, row):
    """src (w floats) shifted right by p, into row's even columns then odd (its padding
    columns as they were: zeros): a Winograd row, or a row's two stride-2 phases
    (cpu.pad_images)."""
    # x's columns 2i, 2i + 1 are padded columns 2i + p, 2i + p + 1
    first, second = _deinterleaved(p, half), _deinterleaved(p + 1, half)
    vectors = w // (2 * LANES)
    split_pairs(src, 0, row, first, second, vectors)
    # the rest in pairs, at offsets from 0: a column's `% 2` and `// 2` per pixel (Python's
    # floor semantics on an int LLVM cannot prove >= 0) cost more than the vectors' part (the
    # digits ResNet's 28-wide rows at b64, one core: split_images 1.15 -> 1.0 ms, grad_split
    # 1.16 -> 0.87)
    evens, odds = row[first:], row[second:]
    for i in range(vectors * LANES, w // 2):
        evens[i] = src[2 * i]
        odds[i] = src[2 * i + 1]
    if w % 2:
        evens[w // 2] = src[w - 1]


@numba.njit(inline="always")
def _split_rows(x, p, hp, half, xs, i):
    """Plane i = n*C + c of x, zero-padded by p, into xs as hp rows of [even columns, odd]."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    n, c = i // c_in, i % c_in
    plane = 2 * half * hp
    dst = xs[i * plane:(i + 1) * plane]
    zero = np.float32(0.0)
    for j in range(plane):                  # zeros, then x's rows (pad_images' order)
        dst[j] = zero
    for iy in range(min(h, hp - p)):
        split_row(x[n, c, iy], w, p, half, dst[(iy + p) * 2 * half:(iy + p + 1) * 2 * half])


@threads.kernel
def split_images(x, p, hp, half, xs):
    """xs: every plane of x [N, C, H, W] zero-padded by p (top, left) into hp rows of 2*half
    floats, each row its even columns then its odd ones; zeros past x."""
    for i in numba.prange(x.shape[0] * x.shape[1]):
        _split_rows(x, p, hp, half, xs, i)


@numba.njit(inline="always")
def _grad_split_filter(code, args):
    dy, y, pre, pa, pb, a, oh, ow, hd, half, dzs, f = args
    n_img, f_out = dy.shape[0], dy.shape[1]
    plane = hd * 2 * half
    zero = np.float32(0.0)
    acc = 0.0
    for n in range(n_img):
        dst = dzs[(n * f_out + f) * plane:(n * f_out + f + 1) * plane]
        for j in range(plane):
            dst[j] = zero
        for oy in range(oh):
            row = dst[(oy + a) * 2 * half:(oy + a + 1) * 2 * half]
            # output column ox is padded column ox + a: even ox at `evens`, odd at `odds`
            # (split_row's pairs, from 0: no `% 2`, `// 2` per pixel)
            evens, odds = row[_deinterleaved(a, half):], row[_deinterleaved(a + 1, half):]
            j0 = oy * ow
            dys, ys, pres = dy[n, f, j0:j0 + ow], y[n, f, j0:j0 + ow], pre[n, f, j0:j0 + ow]
            for i in range(ow // 2):
                g0 = activate_grad(code, pa, pb, dys[2 * i], ys[2 * i], pres[2 * i])
                g1 = activate_grad(code, pa, pb, dys[2 * i + 1], ys[2 * i + 1], pres[2 * i + 1])
                evens[i] = g0
                odds[i] = g1
                acc += g0 + g1
            if ow % 2:
                g = activate_grad(code, pa, pb, dys[ow - 1], ys[ow - 1], pres[ow - 1])
                evens[ow // 2] = g
                acc += g
    return acc


@activation_kernel(split="backward", grad="dy")
def grad_split(dy, y, pre, code, pa, pb, a, oh, ow, hd, half, dzs, db):
    """dzs: dL/d(pre-activation) of each image and filter (dy, y, pre [N, F, oh*ow]) in a
    plane of hd rows of 2*half, at rows and columns a.., de-interleaved like split_images,
    zeros elsewhere; db [F, 1] its sums, or [F, P] (a bias per position) its sums over the
    images, in float64."""
    n_img, f_out = dy.shape[0], dy.shape[1]
    for f in numba.prange(f_out):
        total = specialised(code, _grad_split_filter, (dy, y, pre, pa, pb, a, oh, ow, hd, half, dzs, f))
        if db.shape[1] == 1:
            db[f, 0] = total
        else:
            for j in range(oh * ow):
                acc = 0.0
                for n in range(n_img):
                    acc += activate_grad(code, pa, pb, dy[n, f, j], y[n, f, j], pre[n, f, j])
                db[f, j] = acc


@threads.kernel
def input_transform(xs, plane, half, th, tw, u0, u1, v, cols):
    """v [n^2, C, T] (its n^2 blocks apart: wino_views) = B^T d B of the tiles of tile rows
    u0 .. u1-1 (u = n*th + ty, tw tiles each, T = (u1 - u0)*tw) of xs's planes (C an image,
    `plane` floats each, already padded, split_images' layout; cols: Geometry.cols, n of
    them). A channel's tile rows go in order on one thread (a row's last vector runs into
    the next row's lanes, which that row then writes)."""
    c_in, t_all = v.shape[1], v.shape[2]
    pstride = v.strides[0] // v.itemsize            # padded: wino_views
    wp = 2 * half
    for c in numba.prange(c_in):
        for u in range(u0, u1):
            n, ty = u // th, u % th
            r = (n * c_in + c) * plane + 2 * ty * wp
            at = (u - u0) * tw
            wino_input(xs, r, wp, cols, v, c * t_all + at, pstride, tw, t_all - at, cols)


@threads.kernel
def grad_transform(dzs, plane_d, half_d, a, th, tw, u0, u1, z, taps):
    """z [n^2, K, T] = A e A^T of the 2x2 output gradients e of tile rows u0 .. u1-1 (dzs:
    grad_split's planes, K an image, the gradient at rows and columns a..; taps: range(n))."""
    f_out, t_all = z.shape[1], z.shape[2]
    pstride = z.strides[0] // z.itemsize
    wd = 2 * half_d
    ca, cb = _deinterleaved(a, half_d), _deinterleaved(a + 1, half_d)   # columns a + 2t, a + 2t + 1
    for f in numba.prange(f_out):
        for u in range(u0, u1):
            n, ty = u // th, u % th
            r0 = (n * f_out + f) * plane_d + (a + 2 * ty) * wd
            at = (u - u0) * tw
            wino_grad(dzs, r0, wd, (ca, cb), z, f * t_all + at, pstride, tw, t_all - at, taps)


@numba.njit(inline="always")
def _output_rows(code, args):
    m, th, tw, u0, u1, oh, ow, bias, pa, pb, keep, plain, y, pre, taps, f = args
    f_out, t_all, pstride = m.shape[1], m.shape[2], m.strides[0] // m.itemsize
    yflat = y.reshape(-1)
    for u in range(u0, u1):
        n, ty = u // th, u % th
        rows = min(2, oh - 2 * ty)
        wino_output(m, f * t_all + (u - u0) * tw, pstride, yflat, (n * f_out + f) * oh * ow + 2 * ty * ow,
                    ow, tw, ow, rows, taps)
        if not plain:                   # bias and activation over the rows just written
            j0, j1 = 2 * ty * ow, (2 * ty + rows) * ow
            out = y[n, f, j0:j1]
            if bias.shape[1] == 1:
                b = bias[f, 0]
                for j in range(j1 - j0):
                    x = out[j] + b
                    if keep:
                        pre[n, f, j0 + j] = x
                    out[j] = activate(code, pa, pb, x)
            else:
                for j in range(j1 - j0):
                    x = out[j] + bias[f, j0 + j]
                    if keep:
                        pre[n, f, j0 + j] = x
                    out[j] = activate(code, pa, pb, x)


@activation_kernel(split="forward")
def output_transform(m, th, tw, u0, u1, oh, ow, bias, code, pa, pb, keep, plain, y, pre, taps):
    """y [N, K, oh*ow] = f(bias + A^T M A) for the tiles of tile rows u0 .. u1-1 of m [n^2, K,
    T]; pre the pre-activation where keep; plain: no bias and the identity (y is A^T M A);
    taps: range(n)."""
    for f in numba.prange(m.shape[1]):
        specialised(code, _output_rows, (m, th, tw, u0, u1, oh, ow, bias, pa, pb, keep, plain, y, pre, taps, f))


LINE = 16       # floats in a 64-byte cache line


def _block(rows, t):
    """Floats from one of wino_views' blocks of rows x t to the next: past its end by at least
    one line, an odd number of lines in all."""
    lines = -(-rows * t // LINE) + 1
    return LINE * (lines + 1 - lines % 2)


def wino_views(buffer, nn, rows, t):
    """A [nn, rows, t] view of buffer (views_size floats at least) whose nn blocks lie an odd
    number of 64-byte lines apart (`_block`): the transforms read or write one 8-tile vector
    in each block in turn, and blocks a multiple of 4 KB apart (a chunk of 256 tiles of 32
    channels) all fell in one set of the L1 cache (CIFAR-10's 5x5 conv2, a group's input
    transforms: 2.9 ms; 1.5 ms in 248-tile chunks; 1.1 ms laid out so). Never C-contiguous,
    so the kernels compile for one layout."""
    stride = _block(rows, t)
    return buffer[:nn * stride].reshape(nn, stride)[:, :rows * t].reshape(nn, rows, t)


def views_size(nn, rows, t):
    """Floats that wino_views' blocks of rows x t take (no fewer rows or tiles take more)."""
    return nn * _block(rows, t)
