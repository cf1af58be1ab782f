"""CUDA conv: im2col -> tiled GEMM per group (one launch) -> bias + fused activation.

Layouts, as in layers/conv/cpu.py:
    cols [C*k*k, N*P]  row c*k*k + ky*k + kx, column n*P + oy*OW + ox  (P = OH*OW)
    tmp  [F, N*P]      the GEMM result W_g @ cols_g for every group g (grid z = groups)
    y    [N, F, OH, OW]
Biases: [F] read as [F, 1], or [F, OH, OW] (`shared_biases: false`) read as [F, P]; without
biases (`bias: false`) a zero [F, 1] on the device, and backward skips the bias reduction.
Backward: dtmp [F, N*P] = dL/d(pre-activation) gathered from dy, with per-(filter,
chunk) partial bias sums reduced by a shared-memory tree (per-position biases: one thread
per (filter, position) sums its images instead); dW_g = dtmp_g @ cols_g^T
(split-K over the long N*P dimension, summed deterministically); dcols_g = W_g^T @ dtmp_g
written over the cols buffer (its contents were last needed by dW); col2im gives each
input element to one thread that sums every column entry that read it (no atomics).

channel_sets: the input's chosen channels are gathered into xg [N, groups*len(set), H, W]
first and the convolution reads xg; backward's dx of xg (dxg) goes back to the input's
channels, one thread per dx element summing the xg channels that copied it (no atomics).

Buffers (reused while shapes hold): cols, tmp, y, pre (abs, square only), dtmp, dbpart, dweight,
dbias, dx, and the split-K scratch. The returned y, dx and gradients are these buffers:
the next forward/backward of this layer overwrites them.
"""
import numpy as np
from numba import cuda, float32

from layers.cudabase import CudaLayer, block_sum, covering_outputs
from layers.cudagemm import EBLOCK, RBLOCK, blocks_for, gemm, sum_rows
from layers.neuron.cuda import activate, activate_grad, uses_input

GATHER_PER_THREAD = 8      # elements per thread (per filter) in the gradient gather
MAX_CHUNKS = 1024          # partial bias sums per filter at most


@cuda.jit
def im2col_kernel(x, cols, k, stride, padding, oh, ow):
    """One thread per (c, n, oy, ox): writes its k*k column entries (zero in the padding)."""
    t = cuda.grid(1)
    n_img = x.shape[0]
    c_in = x.shape[1]
    h = x.shape[2]
    w = x.shape[3]
    p_out = oh * ow
    np_ = n_img * p_out
    if t < c_in * np_:
        c = t // np_
        col = t - c * np_
        n = col // p_out
        p = col - n * p_out
        oy = p // ow
        ox = p - oy * ow
        iy0 = oy * stride - padding
        ix0 = ox * stride - padding
        row = c * k * k
        for ky in range(k):
            iy = iy0 + ky
            for kx in range(k):
                ix = ix0 + kx
                v = float32(0.0)
                if iy >= 0 and iy < h and ix >= 0 and ix < w:
                    v = x[n, c, iy, ix]
                cols[row + ky * k + kx, col] = v


@cuda.jit
def bias_act_kernel(tmp, bias, code, pa, pb, keep, y, pre):
    """y[n, f, p] = f(tmp[f, n*P + p] + bias[f, p or 0]) for the activation (code, pa, pb),
    bias [F, 1] or [F, P]; keep != 0: pre[n, f, p] = the sum."""
    t = cuda.grid(1)
    n_img = y.shape[0]
    f_out = y.shape[1]
    p_out = y.shape[2]
    if t < n_img * f_out * p_out:
        n = t // (f_out * p_out)
        r = t - n * (f_out * p_out)
        f = r // p_out
        p = r - f * p_out
        a = tmp[f, n * p_out + p] + bias[f, p if bias.shape[1] > 1 else 0]
        if keep != 0:
            pre[n, f, p] = a
        y[n, f, p] = activate(code, pa, pb, a)


@cuda.jit
def grad_gather_kernel(dy, y, pre, code, pa, pb, dtmp, partial):
    """Block (chunk, f): dtmp[f, e] = activate_grad(...) for its strided share of e in [0, N*P),
    and partial[f, chunk] = their sum (shared-memory tree, no atomics)."""
    buf = cuda.shared.array(RBLOCK, float32)
    f = cuda.blockIdx.y
    chunk = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_img = dy.shape[0]
    p_out = dy.shape[2]
    total = n_img * p_out
    step = cuda.gridDim.x * RBLOCK
    acc = float32(0.0)
    e = chunk * RBLOCK + tid
    while e < total:
        n = e // p_out
        p = e - n * p_out
        a = pre[n, f, p] if uses_input(code) else float32(0.0)
        g = activate_grad(code, pa, pb, dy[n, f, p], y[n, f, p], a)
        dtmp[f, e] = g
        acc += g
        e += step
    buf[tid] = acc
    block_total = block_sum(buf, tid, RBLOCK)
    if tid == 0:
        partial[f, chunk] = block_total


@cuda.jit
def position_bias_grad_kernel(dtmp, db):
    """One thread per (filter, position) of db [F, P]: db[f, p] = sum over images of dtmp[f, n*P + p]."""
    t = cuda.grid(1)
    f_out = db.shape[0]
    p_out = db.shape[1]
    if t < f_out * p_out:
        f = t // p_out
        p = t - f * p_out
        acc = float32(0.0)
        for n in range(dtmp.shape[1] // p_out):
            acc += dtmp[f, n * p_out + p]
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
        p_out = oh * ow
        ypos = iy + padding          # = oy*stride + ky
        xpos = ix + padding
        oy0, oy1 = covering_outputs(ypos, k, stride, oh)
        ox0, ox1 = covering_outputs(xpos, k, stride, ow)
        row0 = c * k * k
        col0 = n * p_out
        acc = float32(0.0)
        for oy in range(oy0, oy1):
            ky = ypos - oy * stride
            for ox in range(ox0, ox1):
                kx = xpos - ox * stride
                acc += dcols[row0 + ky * k + kx, col0 + oy * ow + ox]
        dx[n, c, iy, ix] = acc


@cuda.jit
def gather_channels_kernel(x, index, xg):
    """One thread per xg[n, j, iy, ix] = x[n, index[j], iy, ix]."""
    t = cuda.grid(1)
    count = xg.shape[1]
    h = xg.shape[2]
    w = xg.shape[3]
    if t < xg.shape[0] * count * h * w:
        ix = t % w
        r = t // w
        iy = r % h
        r = r // h
        j = r % count
        n = r // count
        xg[n, j, iy, ix] = x[n, index[j], iy, ix]


@cuda.jit
def scatter_add_channels_kernel(dxg, index, dx):
    """One thread per dx[n, c, iy, ix]: the sum of dxg[n, j, iy, ix] over the j with index[j] == c."""
    t = cuda.grid(1)
    c_in = dx.shape[1]
    h = dx.shape[2]
    w = dx.shape[3]
    if t < dx.shape[0] * c_in * h * w:
        ix = t % w
        r = t // w
        iy = r % h
        r = r // h
        c = r % c_in
        n = r // c_in
        acc = float32(0.0)
        for j in range(index.shape[0]):
            if index[j] == c:
                acc += dxg[n, j, iy, ix]
        dx[n, c, iy, ix] = acc


KERNELS = [
    (im2col_kernel, "void(float32[:, :, :, ::1], float32[:, ::1], "
                    "int64, int64, int64, int64, int64)"),
    (bias_act_kernel, "void(float32[:, ::1], float32[:, ::1], int64, float32, float32, int64, "
                      "float32[:, :, ::1], float32[:, :, ::1])"),
    (position_bias_grad_kernel, "void(float32[:, ::1], float32[:, ::1])"),
    (grad_gather_kernel, "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], "
                         "int64, float32, float32, "
                         "float32[:, ::1], float32[:, ::1])"),
    (col2im_kernel, "void(float32[:, ::1], int64, int64, int64, int64, int64, "
                    "float32[:, :, :, ::1])"),
    (gather_channels_kernel, "void(float32[:, :, :, ::1], int64[::1], float32[:, :, :, ::1])"),
    (scatter_add_channels_kernel, "void(float32[:, :, :, ::1], int64[::1], float32[:, :, :, ::1])"),
]


class ConvCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self._x = None
        self._cols_valid = False
        self._zero_bias = None
        self._index = None        # channel_sets' gather index on the device, made on first use

    def _gather(self, x, stream):
        """x itself, or with channel_sets its chosen channels gathered into xg."""
        lay = self.layer
        if lay._index is None:
            return x
        if self._index is None:
            self._index = cuda.to_device(lay._index)
        xg = self.buffer("xg", (x.shape[0], lay._index.size) + tuple(lay.input_shape[1:]))
        gather_channels_kernel[blocks_for(xg.size), EBLOCK, stream](x, self._index, xg)
        return xg

    def _bias(self, params, p_out):
        """The bias as bias_act_kernel reads it: [F, 1] or [F, P]; zeros [F, 1] without biases."""
        lay = self.layer
        if lay.bias:
            return params["bias"].reshape(lay.filters, 1 if lay.shared_biases else p_out)
        if self._zero_bias is None:       # made once, on the first forward
            self._zero_bias = cuda.to_device(np.zeros((lay.filters, 1), np.float32))
        return self._zero_bias

    def _dims(self, n):
        lay = self.layer
        oh, ow = lay.out_hw
        p_out = oh * ow
        groups = lay.groups
        fg = lay.filters // groups
        kg = (lay.channels // groups) * lay.size * lay.size
        return oh, ow, p_out, groups, fg, kg

    def _im2col(self, x, stream):
        lay = self.layer
        n = x.shape[0]
        oh, ow, p_out, _, _, _ = self._dims(n)
        kk = lay.size * lay.size
        cols = self.buffer("cols", (lay.channels * kk, n * p_out))
        threads = lay.channels * n * p_out
        im2col_kernel[blocks_for(threads), EBLOCK, stream](
            x, cols, lay.size, lay.stride, lay.padding, oh, ow)
        self._cols_valid = True
        return cols

    def forward(self, x, params, train, seed, stream):
        lay = self.layer
        n = x.shape[0]
        shape = (n,) + tuple(lay.input_shape)
        if tuple(x.shape) != shape:
            x = x.reshape(shape)
        x = self._gather(x, stream)
        oh, ow, p_out, groups, fg, kg = self._dims(n)
        npix = n * p_out
        cols = self._im2col(x, stream)
        tmp = self.buffer("tmp", (lay.filters, npix))
        # tmp_g [fg, N*P] = W_g [fg, kg] @ cols_g [kg, N*P], every group in one launch
        gemm(stream, fg, npix, kg, params["weight"], cols, tmp,
             batch=groups, stride_a=fg * kg, stride_b=kg * npix, stride_c=fg * npix)
        y = self.buffer("y", (n, lay.filters, oh, ow))
        y3 = y.reshape(n, lay.filters, p_out)
        keep = lay.act.needs_input
        pre = self.buffer("pre", y3.shape) if keep else y3
        bias = self._bias(params, p_out)
        bias_act_kernel[blocks_for(y3.size), EBLOCK, stream](
            tmp, bias, *lay.act.kernel_args(), 1 if keep else 0, y3, pre)
        self._x, self._y3, self._pre = x, y3, pre
        return y

    def backward(self, dy, params, need_dx, stream):
        lay = self.layer
        x = self._x
        n = x.shape[0]
        oh, ow, p_out, groups, fg, kg = self._dims(n)
        npix = n * p_out
        f = lay.filters
        dy3 = dy.reshape(n, f, p_out)
        dtmp = self.buffer("dtmp", (f, npix))
        chunks = max(1, min(MAX_CHUNKS, -(-npix // (RBLOCK * GATHER_PER_THREAD))))
        partial = self.buffer("dbpart", (f, chunks))
        grad_gather_kernel[(chunks, f), RBLOCK, stream](
            dy3, self._y3, self._pre, *lay.act.kernel_args(), dtmp, partial)
        grads = {}
        if lay.bias:
            db = grads["bias"] = self.buffer("dbias", lay.param_shapes()["bias"])
            if lay.shared_biases:
                sum_rows(partial, db, stream)
            else:
                position_bias_grad_kernel[blocks_for(f * p_out), EBLOCK, stream](dtmp, db.reshape(f, p_out))
        # cols doubles as dcols below: redo it if an earlier backward overwrote it
        cols = self._buffers["cols"] if self._cols_valid else self._im2col(x, stream)
        dw = self.buffer("dweight", lay.param_shapes()["weight"])
        # dW_g [fg, kg] = dtmp_g [fg, N*P] @ cols_g^T  (cols_g stored [kg, N*P])
        gemm(stream, fg, kg, npix, dtmp, cols, dw, trans_b=True, ldb=npix,
             batch=groups, stride_a=fg * npix, stride_b=kg * npix, stride_c=fg * kg,
             scratch=lambda shape: self.buffer("splitk", shape))
        grads["weight"] = dw
        if not need_dx:
            return None, grads
        dcols = cols          # its contents were last needed for dW: reuse the memory
        self._cols_valid = False
        # dcols_g [kg, N*P] = W_g^T (W_g stored [fg, kg]) @ dtmp_g [fg, N*P]
        gemm(stream, kg, npix, fg, params["weight"], dtmp, dcols, trans_a=True, lda=kg,
             batch=groups, stride_a=fg * kg, stride_b=fg * npix, stride_c=kg * npix)
        tag = "dx" if lay._index is None else "dxg"        # dxg: the dx of the gathered xg
        dx = self.buffer(tag, (n, lay.channels) + tuple(lay.input_shape[1:]))
        col2im_kernel[blocks_for(dx.size), EBLOCK, stream](
            dcols, lay.size, lay.stride, lay.padding, oh, ow, dx)
        if lay._index is not None:
            dxg, dx = dx, self.buffer("dx", (n,) + tuple(lay.input_shape))
            scatter_add_channels_kernel[blocks_for(dx.size), EBLOCK, stream](dxg, self._index, dx)
        return dx, grads


def make(layer):
    return ConvCuda(layer)
