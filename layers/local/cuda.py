"""CUDA locally connected layer: im2col per location -> one batched tiled GEMM (a product
per location and group) -> bias + fused activation. The twin of cpu.py, same layouts:

    cols [P, C*k*k, N]   row c*k*k + ky*k + kx of location p = oy*OW + ox, column n
    tmp  [P, F, N]       W_z @ cols_z for z = p*groups + g: W_z [F/groups, Kg] is
                         weight[p, g*F/groups : (g+1)*F/groups] and cols_z [Kg, N] the
                         group's row block of location p, all at stride z (one launch)
    y    [N, F, OH, OW], bias [F, OH, OW]

Backward: a gather forms dtmp [P, F, N] = dL/d(pre-activation) and the bias gradient (one
thread per (filter, location), summing its batch column); dW_z = dtmp_z @ cols_z^T;
dcols_z = W_z^T @ dtmp_z written over cols (last needed by dW); col2im gives each input
element to one thread that sums every column entry that read it (no atomics).
"""
from numba import cuda, float32

from layers.cudabase import CudaLayer, covering_outputs
from layers.cudagemm import EBLOCK, blocks_for, gemm
from layers.neuron.cuda import activate, activate_grad, uses_input

MAX_GRID_Z = 65535          # CUDA's limit on gridDim.z, where the GEMM puts its batch


@cuda.jit
def im2col_kernel(x, cols, k, stride, padding, oh, ow):
    """One thread per (location, channel, image): its k*k column entries (zero outside the image)."""
    t = cuda.grid(1)
    n_img = x.shape[0]
    c_in = x.shape[1]
    h = x.shape[2]
    w = x.shape[3]
    if t < oh * ow * c_in * n_img:
        n = t % n_img
        r = t // n_img
        c = r % c_in
        p = r // c_in
        oy = p // ow
        ox = p - oy * ow
        row = c * k * k
        for ky in range(k):
            iy = oy * stride - padding + ky
            for kx in range(k):
                ix = ox * stride - padding + kx
                v = float32(0.0)
                if iy >= 0 and iy < h and ix >= 0 and ix < w:
                    v = x[n, c, iy, ix]
                cols[p, row + ky * k + kx, n] = v


@cuda.jit
def bias_act_kernel(tmp, bias, code, pa, pb, keep, y, pre):
    """y[n, f, p] = f(tmp[p, f, n] + bias[f, p]); keep != 0: pre[n, f, p] = the sum."""
    t = cuda.grid(1)
    n_img = y.shape[0]
    f_out = y.shape[1]
    p_out = y.shape[2]
    if t < n_img * f_out * p_out:
        p = t % p_out
        r = t // p_out
        f = r % f_out
        n = r // f_out
        a = tmp[p, f, n] + bias[f, p]
        if keep != 0:
            pre[n, f, p] = a
        y[n, f, p] = activate(code, pa, pb, a)


@cuda.jit
def grad_gather_kernel(dy, y, pre, code, pa, pb, dtmp, db):
    """One thread per (filter, location): dtmp[p, f, n] = dL/d(pre-activation) for every
    image, and db[f, p] = their sum."""
    t = cuda.grid(1)
    n_img = dy.shape[0]
    f_out = dy.shape[1]
    p_out = dy.shape[2]
    if t < f_out * p_out:
        f = t // p_out
        p = t - f * p_out
        acc = float32(0.0)
        for n in range(n_img):
            a = pre[n, f, p] if uses_input(code) else float32(0.0)
            g = activate_grad(code, pa, pb, dy[n, f, p], y[n, f, p], a)
            dtmp[p, f, n] = g
            acc += g
        db[f, p] = acc


@cuda.jit
def col2im_kernel(dcols, k, stride, padding, oh, ow, dx):
    """One thread per dx[n, c, iy, ix]: the sum of every column entry that read it."""
    t = cuda.grid(1)
    n_img = dx.shape[0]
    c_in = dx.shape[1]
    h = dx.shape[2]
    w = dx.shape[3]
    if t < n_img * c_in * h * w:
        ix = t % w
        r = t // w
        iy = r % h
        r = r // h
        c = r % c_in
        n = r // c_in
        ypos = iy + padding          # = oy*stride + ky
        xpos = ix + padding
        oy0, oy1 = covering_outputs(ypos, k, stride, oh)
        ox0, ox1 = covering_outputs(xpos, k, stride, ow)
        row0 = c * k * k
        acc = float32(0.0)
        for oy in range(oy0, oy1):
            ky = ypos - oy * stride
            for ox in range(ox0, ox1):
                kx = xpos - ox * stride
                acc += dcols[oy * ow + ox, row0 + ky * k + kx, n]
        dx[n, c, iy, ix] = acc


_F3 = "float32[:, :, ::1]"
KERNELS = [
    (im2col_kernel, f"void(float32[:, :, :, ::1], {_F3}, int64, int64, int64, int64, int64)"),
    (bias_act_kernel, f"void({_F3}, float32[:, ::1], int64, float32, float32, int64, {_F3}, {_F3})"),
    (grad_gather_kernel, f"void({_F3}, {_F3}, {_F3}, int64, float32, float32, {_F3}, float32[:, ::1])"),
    (col2im_kernel, f"void({_F3}, int64, int64, int64, int64, int64, float32[:, :, :, ::1])"),
]


def batched_gemm(stream, m, n, k, a, b, c, batch, stride_a, stride_b, stride_c, **kw):
    """gemm over `batch` products, in launches of at most MAX_GRID_Z (the grid's z limit)."""
    for z0 in range(0, batch, MAX_GRID_Z):
        gemm(stream, m, n, k, a, b, c, off_a=z0 * stride_a, off_b=z0 * stride_b, off_c=z0 * stride_c,
             batch=min(MAX_GRID_Z, batch - z0), stride_a=stride_a, stride_b=stride_b,
             stride_c=stride_c, **kw)


class LocalCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self._x = None
        self._cols_valid = False
        oh, ow = layer.out_hw
        g = layer.groups
        # the batched GEMM: P*groups products [F/groups, Kg] x [Kg, N]
        self.p_out, self.fg, self.kg = oh * ow, layer.filters // g, (layer.channels // g) * layer.size ** 2

    def _im2col(self, x, stream):
        lay = self.layer
        n = x.shape[0]
        oh, ow = lay.out_hw
        cols = self.buffer("cols", (self.p_out, lay.channels * lay.size * lay.size, n))
        threads = self.p_out * lay.channels * n
        im2col_kernel[blocks_for(threads), EBLOCK, stream](x, cols, lay.size, lay.stride, lay.padding,
                                                           oh, ow)
        self._cols_valid = True
        return cols

    def forward(self, x, params, train, seed, stream):
        lay = self.layer
        n = x.shape[0]
        f, p_out, fg, kg = lay.filters, self.p_out, self.fg, self.kg
        cols = self._im2col(x, stream)
        tmp = self.buffer("tmp", (p_out, f, n))
        batched_gemm(stream, fg, n, kg, params["weight"], cols, tmp, p_out * lay.groups,
                     fg * kg, kg * n, fg * n)
        y = self.buffer("y", (n, f) + tuple(lay.out_hw))
        y3 = y.reshape(n, f, p_out)
        keep = lay.act.needs_input
        pre = self.buffer("pre", y3.shape) if keep else y3
        bias_act_kernel[blocks_for(y3.size), EBLOCK, stream](
            tmp, params["bias"].reshape(f, p_out), *lay.act.kernel_args(), 1 if keep else 0, y3, pre)
        self._x, self._y3, self._pre = x, y3, pre
        return y

    def backward(self, dy, params, need_dx, stream):
        lay = self.layer
        x = self._x
        n = x.shape[0]
        f, p_out, fg, kg = lay.filters, self.p_out, self.fg, self.kg
        batch = p_out * lay.groups
        dtmp = self.buffer("dtmp", (p_out, f, n))
        db = self.buffer("dbias", (f,) + tuple(lay.out_hw))
        grad_gather_kernel[blocks_for(f * p_out), EBLOCK, stream](
            dy.reshape(n, f, p_out), self._y3, self._pre, *lay.act.kernel_args(), dtmp,
            db.reshape(f, p_out))
        # cols doubles as dcols below: redo it if an earlier backward overwrote it
        cols = self._buffers["cols"] if self._cols_valid else self._im2col(x, stream)
        dw = self.buffer("dweight", lay.param_shapes()["weight"])
        # dW_z [fg, kg] = dtmp_z [fg, N] @ cols_z^T (cols_z stored [kg, N])
        batched_gemm(stream, fg, kg, n, dtmp, cols, dw, batch, fg * n, kg * n, fg * kg,
                     trans_b=True, ldb=n)
        grads = {"weight": dw, "bias": db}
        if not need_dx:
            return None, grads
        self._cols_valid = False         # its contents were last needed for dW: reuse the memory
        # dcols_z [kg, N] = W_z^T (W_z stored [fg, kg]) @ dtmp_z [fg, N]
        batched_gemm(stream, kg, n, fg, params["weight"], dtmp, cols, batch, fg * kg, fg * n, kg * n,
                     trans_a=True, lda=kg)
        dx = self.buffer("dx", x.shape)
        oh, ow = lay.out_hw
        col2im_kernel[blocks_for(dx.size), EBLOCK, stream](cols, lay.size, lay.stride, lay.padding,
                                                           oh, ow, dx)
        return dx, grads


def make(layer):
    return LocalCuda(layer)
