"""CUDA batch normalisation (the twin of cpu.py), on the input seen as [N, C, S].

Statistics and the parameter gradients: one block per channel, each thread striding over
the channel's N*S values, then a shared-memory tree (deterministic, no atomics). The output
and the input gradient: one thread per value. The running statistics are updated by a
per-channel kernel after a training forward (update_state), on the layer's stream.

A global batch cut over processes (Layer.batch_sum): the per-channel sums of this part come
to the host (a few floats), are summed over the parts there, and the global mean, variance
and gradient sums go back to the device; the kernels then run as in one process.
"""
import math

import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, block_sum, blocks_for
from layers.neuron.cuda import activate, activate_grad, uses_input


@cuda.jit(device=True, inline="always")
def _channel_sum(x, ch, sh, tid):
    """The block's sum of x[:, ch, :]: each thread strides over the values, then the tree."""
    s = x.shape[2]
    acc = float32(0.0)
    for t in range(tid, x.shape[0] * s, BLOCK):
        i = t // s
        acc += x[i, ch, t - i * s]
    sh[tid] = acc
    return block_sum(sh, tid, BLOCK)


@cuda.jit(device=True, inline="always")
def _channel_squared_deviations(x, ch, mu, sh, tid):
    """The block's sum of (x[:, ch, :] - mu)^2."""
    s = x.shape[2]
    acc = float32(0.0)
    for t in range(tid, x.shape[0] * s, BLOCK):
        i = t // s
        d = x[i, ch, t - i * s] - mu
        acc += d * d
    sh[tid] = acc
    return block_sum(sh, tid, BLOCK)


@cuda.jit
def statistics(x, mean, var):
    """Block c: mean[c] and the biased variance var[c] over x[:, c, :] (two passes)."""
    sh = cuda.shared.array(BLOCK, float32)
    ch = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    count = x.shape[0] * x.shape[2]
    mu = _channel_sum(x, ch, sh, tid) / float32(count)
    cuda.syncthreads()                   # every thread has read sh[0] before it is reused
    total = _channel_squared_deviations(x, ch, mu, sh, tid)
    if tid == 0:
        mean[ch] = mu
        var[ch] = total / float32(count)


@cuda.jit
def sums(x, out):
    """Block c: out[c] = the sum of x[:, c, :] (this part's share of the mean)."""
    sh = cuda.shared.array(BLOCK, float32)
    total = _channel_sum(x, cuda.blockIdx.x, sh, cuda.threadIdx.x)
    if cuda.threadIdx.x == 0:
        out[cuda.blockIdx.x] = total


@cuda.jit
def squared_deviations(x, mean, out):
    """Block c: out[c] = the sum of (x[:, c, :] - mean[c])^2 (this part's share of the variance)."""
    sh = cuda.shared.array(BLOCK, float32)
    ch = cuda.blockIdx.x
    total = _channel_squared_deviations(x, ch, mean[ch], sh, cuda.threadIdx.x)
    if cuda.threadIdx.x == 0:
        out[ch] = total


@cuda.jit
def coefficients(weight, mean_in, var_in, eps, mean, var, invstd, scale):
    ch = cuda.grid(1)
    if ch < weight.size:
        r = float32(1.0) / math.sqrt(var_in[ch] + eps)
        mean[ch] = mean_in[ch]
        var[ch] = var_in[ch]
        invstd[ch] = r
        scale[ch] = weight[ch] * r


@cuda.jit
def apply(x, mean, scale, bias, code, pa, pb, y):
    """y = f((x - mean[c]) scale[c] + bias[c]), one thread per value."""
    t = cuda.grid(1)
    n, c, s = x.shape
    if t < n * c * s:
        i = t // (c * s)
        rest = t - i * c * s
        ch = rest // s
        j = rest - ch * s
        y[i, ch, j] = activate(code, pa, pb, (x[i, ch, j] - mean[ch]) * scale[ch] + bias[ch])


@cuda.jit
def grad_sums(dy, y, x, mean, invstd, scale, bias, code, pa, pb, dweight, dbias):
    """Block c: dbias[c] = sum of dz, dweight[c] = sum of dz * xhat."""
    sw = cuda.shared.array(BLOCK, float32)
    sb = cuda.shared.array(BLOCK, float32)
    ch = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n, s = x.shape[0], x.shape[2]
    mu, r, k, b = mean[ch], invstd[ch], scale[ch], bias[ch]
    aw = float32(0.0)
    ab = float32(0.0)
    for t in range(tid, n * s, BLOCK):
        i = t // s
        j = t - i * s
        d = x[i, ch, j] - mu
        pre = d * k + b if uses_input(code) else float32(0.0)
        g = activate_grad(code, pa, pb, dy[i, ch, j], y[i, ch, j], pre)
        ab += g
        aw += g * (d * r)
    sw[tid] = aw
    sb[tid] = ab
    total_w = block_sum(sw, tid, BLOCK)
    total_b = block_sum(sb, tid, BLOCK)
    if tid == 0:
        dweight[ch] = total_w
        dbias[ch] = total_b


@cuda.jit
def grad_input(dy, y, x, mean, invstd, scale, bias, code, pa, pb, dweight, dbias, inv_count, train, dx):
    """dx = scale (dz - dbias/M - xhat dweight/M) (train != 0), else scale dz."""
    t = cuda.grid(1)
    n, c, s = x.shape
    if t < n * c * s:
        i = t // (c * s)
        rest = t - i * c * s
        ch = rest // s
        j = rest - ch * s
        k = scale[ch]
        d = x[i, ch, j] - mean[ch]
        pre = d * k + bias[ch] if uses_input(code) else float32(0.0)
        g = activate_grad(code, pa, pb, dy[i, ch, j], y[i, ch, j], pre)
        if train != 0:
            g = g - dbias[ch] * inv_count - d * (dweight[ch] * inv_count * invstd[ch])
        dx[i, ch, j] = k * g


@cuda.jit
def update_running(running_mean, running_var, mean, var, momentum, unbias):
    ch = cuda.grid(1)
    if ch < running_mean.size:
        keep = float32(1.0) - momentum
        running_mean[ch] = keep * running_mean[ch] + momentum * mean[ch]
        running_var[ch] = keep * running_var[ch] + momentum * (var[ch] * unbias)


_A1, _A3 = "float32[::1]", "float32[:, :, ::1]"
KERNELS = [
    (statistics, f"void({_A3}, {_A1}, {_A1})"),
    (sums, f"void({_A3}, {_A1})"),
    (squared_deviations, f"void({_A3}, {_A1}, {_A1})"),
    (coefficients, f"void({_A1}, {_A1}, {_A1}, float32, {_A1}, {_A1}, {_A1}, {_A1})"),
    (apply, f"void({_A3}, {_A1}, {_A1}, {_A1}, int64, float32, float32, {_A3})"),
    (grad_sums, f"void({_A3}, {_A3}, {_A3}, {_A1}, {_A1}, {_A1}, {_A1}, int64, float32, float32, "
                f"{_A1}, {_A1})"),
    (grad_input, f"void({_A3}, {_A3}, {_A3}, {_A1}, {_A1}, {_A1}, {_A1}, int64, float32, float32, "
                 f"{_A1}, {_A1}, float32, int64, {_A3})"),
    (update_running, f"void({_A1}, {_A1}, {_A1}, {_A1}, float32, float32)"),
]


class BatchNormCuda(CudaLayer):
    def _view(self, a):
        lay = self.layer
        return a.reshape(a.shape[0], lay.channels, lay.pixels)

    def forward(self, x, params, train, seed, stream):
        lay = self.layer
        n, c = x.shape[0], lay.channels
        if train and lay.batch_sum is None:
            lay.check_count(n * lay.pixels)
        x3 = self._view(x)
        y = self.buffer("y", (n,) + tuple(lay.output_shape))
        mean, var, invstd, scale = (self.buffer(tag, (c,)) for tag in ("mean", "var", "invstd", "scale"))
        eps = np.float32(lay.eps)
        self._count = n * lay.pixels
        if train and lay.batch_sum is not None:
            self._count = self._global_statistics(x3, mean, var, stream)
            coefficients[blocks_for(c), BLOCK, stream](params["weight"], mean, var, eps, mean, var, invstd, scale)
        elif train:
            statistics[c, BLOCK, stream](x3, mean, var)
            coefficients[blocks_for(c), BLOCK, stream](params["weight"], mean, var, eps, mean, var, invstd, scale)
        else:
            coefficients[blocks_for(c), BLOCK, stream](params["weight"], params["running_mean"],
                                                       params["running_var"], eps, mean, var, invstd, scale)
        y3 = self._view(y)
        apply[blocks_for(y.size), BLOCK, stream](x3, mean, scale, params["bias"], *lay.act.kernel_args(), y3)
        self._x3, self._y3, self._train = x3, y3, bool(train)
        return y

    def _summed(self, kernel, args, values, stream):
        """values (float64, host) = this part's per-channel `kernel` sums over x, then summed over
        every part of the global batch (batch_sum)."""
        lay = self.layer
        part, host = self.buffer("part", (lay.channels,)), self._host_part()[0]
        kernel[lay.channels, BLOCK, stream](*args, part)
        part.copy_to_host(host, stream=stream)
        stream.synchronize()
        values[:lay.channels] = host
        lay.batch_sum(values)

    def _host_part(self):
        """A host float32 [2, C] staging array, kept between calls."""
        host = getattr(self, "_host", None)
        if host is None:
            host = self._host = np.empty((2, self.layer.channels), np.float32)
        return host

    def _to_device(self, values, dst, stream):
        host = self._host_part()[0]
        np.copyto(host, values, casting="same_kind")
        dst.copy_to_device(host, stream=stream)
        stream.synchronize()         # the staging array is reused at once

    def _global_statistics(self, x3, mean, var, stream):
        """mean and biased var of the global batch; returns its count of values per channel."""
        lay = self.layer
        c = lay.channels
        total = lay.host_sums()[:c + 1]
        total[c] = x3.shape[0] * lay.pixels
        self._summed(sums, (x3,), total, stream)
        count = int(total[c])
        host = self._host_part()[0]
        lay.global_mean(total, count, host)
        mean.copy_to_device(host, stream=stream)
        deviations = total[:c]
        self._summed(squared_deviations, (x3, mean), deviations, stream)
        np.divide(deviations, count, out=deviations)
        self._to_device(deviations, var, stream)
        return count

    def backward(self, dy, params, need_dx, stream):
        lay = self.layer
        x3, y3 = self._x3, self._y3
        n, c = x3.shape[0], lay.channels
        dy3 = dy.reshape(y3.shape)
        mean, invstd, scale = (self._buffers[tag] for tag in ("mean", "invstd", "scale"))
        dw, db = self.buffer("dweight", (c,)), self.buffer("dbias", (c,))
        act = lay.act.kernel_args()
        grad_sums[c, BLOCK, stream](dy3, y3, x3, mean, invstd, scale, params["bias"], *act, dw, db)
        grads = {"weight": dw, "bias": db}
        if not need_dx:
            return None, grads
        dx = self.buffer("dx", (n,) + tuple(lay.input_shape))
        sum_w, sum_b, local = dw, db, n * lay.pixels
        if self._train and lay.batch_sum is not None:      # as the CPU layer's backward
            sum_w, sum_b = self._global_grad_sums(dw, db, local, stream)
        grad_input[blocks_for(dx.size), BLOCK, stream](
            dy3, y3, x3, mean, invstd, scale, params["bias"], *act, sum_w, sum_b,
            np.float32(1.0 / max(local, 1)), 1 if self._train else 0, self._view(dx))
        return dx, grads

    def _global_grad_sums(self, dw, db, local, stream):
        """Device (dweight, dbias) sums of the global batch, in units of its mean loss (see
        BatchNormLayer.backward)."""
        lay = self.layer
        c = lay.channels
        host_w, host_b = self._host_part()
        dw.copy_to_host(host_w, stream=stream)
        db.copy_to_host(host_b, stream=stream)
        stream.synchronize()
        both = lay.shares_of_sums(host_w, host_b, self._count, local)
        lay.batch_sum(both)
        sum_w, sum_b = self.buffer("global_dweight", (c,)), self.buffer("global_dbias", (c,))
        self._to_device(both[:c], sum_b, stream)
        self._to_device(both[c:], sum_w, stream)
        return sum_w, sum_b

    def update_state(self, state, stream):
        lay = self.layer
        if not self._train:
            raise RuntimeError(f"batchnorm '{lay.name}': update_state needs a training forward first")
        count = self._count          # the global batch's, where it is cut over processes
        c = lay.channels
        update_running[blocks_for(c), BLOCK, stream](state["running_mean"], state["running_var"],
                                                     self._buffers["mean"], self._buffers["var"],
                                                     np.float32(lay.momentum), np.float32(count / (count - 1)))


def make(layer):
    return BatchNormCuda(layer)
