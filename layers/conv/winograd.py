"""The Winograd path of conv: 3x3 stride-1 convolutions as F(2x2, 3x3) (wino_tiles).

Per chunk of rows of 2x2-output tiles: the input tiles' transforms V [16, C, T] (Numba), 16
GEMMs M[p] = U[p] V[p] with U = G g G^T [16, K, C] (numpy's BLAS, batched), the outputs'
transforms A^T M A with bias and activation into y (Numba). dx is the same convolution of
the padded gradient with the flipped, transposed filters; dW sums (A e A^T) V^T over the
chunks' tiles (16 GEMMs again) and ends as G^T M G. The padded images and gradients are
de-interleaved planes (each row its even columns, then its odd ones), so a tile row's
columns 2t + j are unit-stride streams for the transforms.
"""
import numba
import numpy as np

from layers import threads
from layers.conv.wino_tiles import split_pairs, wino_grad, wino_input, wino_output
from layers.fma_tiles import LANES
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised

G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])


def fits(size, stride, padding, groups, padding_end):
    """Whether a convolution can take this path: 3x3, stride 1, one group, padding <= 2."""
    return size == 3 and stride == 1 and groups == 1 and padding <= 2 and padding_end == 0


@threads.kernel
def transform_weights(w, out):
    """out [16, K, C] = U = G g G^T of weights w [K, C, 3, 3] (element p = 4a + b)."""
    k_out, c_in = w.shape[0], w.shape[1]
    half = np.float32(0.5)
    for k in numba.prange(k_out):
        t = np.empty((4, 3), np.float32)
        for c in range(c_in):
            g = w[k, c]                             # G g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2
            for j in range(3):
                t[0, j] = g[0, j]
                t[1, j] = (g[0, j] + g[1, j] + g[2, j]) * half
                t[2, j] = (g[0, j] - g[1, j] + g[2, j]) * half
                t[3, j] = g[2, j]
            for a in range(4):                      # (G g) G^T
                out[4 * a, k, c] = t[a, 0]
                out[4 * a + 1, k, c] = (t[a, 0] + t[a, 1] + t[a, 2]) * half
                out[4 * a + 2, k, c] = (t[a, 0] - t[a, 1] + t[a, 2]) * half
                out[4 * a + 3, k, c] = t[a, 2]
    return out


@threads.kernel
def weight_gradient(m, dw):
    """dw [K, C*9] = G^T M G of the summed products m [16, K, C] (element p = 4a + b)."""
    k_out, c_in = m.shape[1], m.shape[2]
    half = np.float32(0.5)
    for k in numba.prange(k_out):
        t = np.empty((4, 3), np.float32)
        for c in range(c_in):                       # M G: columns m0 + (m1+m2)/2, (m1-m2)/2, m3 + (m1+m2)/2
            for a in range(4):
                m0, m1, m2, m3 = m[4 * a, k, c], m[4 * a + 1, k, c], m[4 * a + 2, k, c], m[4 * a + 3, k, c]
                t[a, 0] = m0 + (m1 + m2) * half
                t[a, 1] = (m1 - m2) * half
                t[a, 2] = m3 + (m1 + m2) * half
            for j in range(3):                      # G^T (M G)
                dw[k, c * 9 + j] = t[0, j] + (t[1, j] + t[2, j]) * half
                dw[k, c * 9 + 3 + j] = (t[1, j] - t[2, j]) * half
                dw[k, c * 9 + 6 + j] = t[3, j] + (t[1, j] + t[2, j]) * half


class Geometry:
    """Where a stride-1 3x3 convolution with padding p <= 2 keeps things on this path.
    Output oh x ow in th x tw tiles; x padded into planes of hp rows of 2*half columns
    (even columns, then odd); the gradient of the outputs into planes of hd rows of
    2*half_d, its padding a = 2 - p (dx is the full convolution), at rows and columns a..
    (dW reads it there). dx's tiles cover h x w in thd x twd."""

    def __init__(self, h, w, oh, ow, p):
        self.h, self.w, self.oh, self.ow, self.p, self.a = h, w, oh, ow, p, 2 - p
        self.th, self.tw = -(-oh // 2), -(-ow // 2)
        self.thd, self.twd = -(-h // 2), -(-w // 2)
        self.hp, self.half = 2 * self.th + 2, self.tw + 1
        self.hd = max(2 * self.thd + 2, self.a + 2 * self.th, oh + self.a + 1)
        self.half_d = max(self.twd + 1, -(-(self.a + 2 * self.tw) // 2), -(-(ow + self.a) // 2) + 1)

    def plane(self):
        return self.hp * 2 * self.half

    def plane_d(self):
        return self.hd * 2 * self.half_d

    def slack(self):
        """Floats past a buffer's last plane that the transforms' last vectors read."""
        return 4 * (2 * max(self.half, self.half_d)) + 4 * LANES


@numba.njit(inline="always")
def _split_row(src, w, p, half, row):
    """src (w floats) shifted right by p, into row's even columns then odd (its padding
    columns as they were: zeros)."""
    # x's columns 2i, 2i + 1 are padded columns 2i + p, 2i + p + 1
    first, second = (p % 2) * half + p // 2, ((p + 1) % 2) * half + (p + 1) // 2
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
        _split_row(x[n, c, iy], w, p, half, dst[(iy + p) * 2 * half:(iy + p + 1) * 2 * half])


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
            # (_split_row's pairs, from 0: no `% 2`, `// 2` per pixel)
            evens, odds = row[(a % 2) * half + a // 2:], row[((a + 1) % 2) * half + (a + 1) // 2:]
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
def input_transform(xs, plane, half, th, tw, u0, u1, v):
    """v [16, C, T] = B^T d B of the tiles of tile rows u0 .. u1-1 (u = n*th + ty, tw tiles
    each, T = (u1 - u0)*tw) of xs's planes (C an image, `plane` floats each, already padded,
    split_images' layout). A channel's tile rows go in order on one thread (a row's last
    vector runs into the next row's lanes, which that row then writes)."""
    c_in, t_all = v.shape[1], v.shape[2]
    flat = v.reshape(-1)
    wp = 2 * half
    for c in numba.prange(c_in):
        for u in range(u0, u1):
            n, ty = u // th, u % th
            r = (n * c_in + c) * plane + 2 * ty * wp
            at = (u - u0) * tw
            wino_input(xs, (r, r + wp, r + 2 * wp, r + 3 * wp), (0, half, 1, half + 1), flat, c * t_all + at,
                       c_in * t_all, tw, t_all - at)


@threads.kernel
def grad_transform(dzs, plane_d, half_d, a, th, tw, u0, u1, z):
    """z [16, K, T] = A e A^T of the 2x2 output gradients e of tile rows u0 .. u1-1 (dzs:
    grad_split's planes, K an image, the gradient at rows and columns a..)."""
    f_out, t_all = z.shape[1], z.shape[2]
    flat = z.reshape(-1)
    wd = 2 * half_d
    ca, cb = (a % 2) * half_d + a // 2, ((a + 1) % 2) * half_d + (a + 1) // 2   # columns a + 2t, a + 2t + 1
    for f in numba.prange(f_out):
        for u in range(u0, u1):
            n, ty = u // th, u % th
            r0 = (n * f_out + f) * plane_d + (a + 2 * ty) * wd
            at = (u - u0) * tw
            wino_grad(dzs, (r0, r0 + wd), (ca, cb), flat, f * t_all + at, f_out * t_all, tw, t_all - at)


@numba.njit(inline="always")
def _output_rows(code, args):
    m, th, tw, u0, u1, oh, ow, bias, pa, pb, keep, plain, y, pre, f = args
    f_out, t_all = m.shape[1], m.shape[2]
    flat, yflat = m.reshape(-1), y.reshape(-1)
    for u in range(u0, u1):
        n, ty = u // th, u % th
        rows = min(2, oh - 2 * ty)
        wino_output(flat, f * t_all + (u - u0) * tw, f_out * t_all, yflat, (n * f_out + f) * oh * ow + 2 * ty * ow,
                    ow, tw, ow, rows)
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
def output_transform(m, th, tw, u0, u1, oh, ow, bias, code, pa, pb, keep, plain, y, pre):
    """y [N, K, oh*ow] = f(bias + A^T M A) for the tiles of tile rows u0 .. u1-1 of m [16, K,
    T]; pre the pre-activation where keep; plain: no bias and the identity (y is A^T M A)."""
    for f in numba.prange(m.shape[1]):
        specialised(code, _output_rows, (m, th, tw, u0, u1, oh, ow, bias, pa, pb, keep, plain, y, pre, f))
