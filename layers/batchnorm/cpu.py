"""Numba CPU kernels for batch normalisation, on the input seen as [N, C, S].

Statistics: per channel, two passes (the mean, then the mean squared deviation) with a
partial sum per image, parallel over channels. The output pass applies
y = f((x - mean) scale + b) with scale = w / sqrt(var + eps), the fused activation inlined.
Backward recomputes the pre-activation from x where the activation needs it (abs, square),
so nothing but the per-channel coefficients is kept between the passes.
"""
import numba
import numpy as np

from layers import threads
from layers.channel_sums import channel_sum
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised, uses_input

ZERO, ONE = np.float32(0.0), np.float32(1.0)


@numba.njit(inline="always")
def _channel_squared_deviations(x, ch, mu, total):
    """total + the sum of (x[:, ch, :] - mu)^2, a partial sum per image."""
    for i in range(x.shape[0]):
        part = ZERO
        for j in range(x.shape[2]):
            d = x[i, ch, j] - mu
            part += d * d
        total += part
    return total


@threads.kernel
def statistics(x, mean, var):
    """mean[c] and the biased variance var[c] over x[:, c, :]."""
    n, c, s = x.shape
    count = np.float32(n * s)
    for ch in numba.prange(c):
        mu = channel_sum(x, ch, ZERO) / count
        mean[ch] = mu
        var[ch] = _channel_squared_deviations(x, ch, mu, ZERO) / count


@threads.kernel
def squared_deviations(x, mean, out):
    """out[c] (float64) = the sum of (x[:, c, :] - mean[c])^2: this part's share of the variance."""
    for ch in numba.prange(x.shape[1]):
        out[ch] = _channel_squared_deviations(x, ch, mean[ch], 0.0)


@threads.kernel
def coefficients(weight, mean_in, var_in, eps, mean, var, invstd, scale):
    """mean, var = the statistics used (the batch's or the running ones), invstd =
    1/sqrt(var + eps), scale = weight * invstd."""
    for ch in numba.prange(weight.size):
        r = ONE / np.sqrt(var_in[ch] + eps)
        mean[ch] = mean_in[ch]
        var[ch] = var_in[ch]
        invstd[ch] = r
        scale[ch] = weight[ch] * r


@numba.njit(inline="always")
def _apply_block(code, args):
    pa, pb, x, mean, scale, bias, y, t = args
    c = x.shape[1]
    i = t // c
    ch = t - i * c
    mu, k, b = mean[ch], scale[ch], bias[ch]
    for j in range(x.shape[2]):
        y[i, ch, j] = activate(code, pa, pb, (x[i, ch, j] - mu) * k + b)


@activation_kernel
def apply(code, pa, pb, x, mean, scale, bias, y):
    """y = f((x - mean[c]) scale[c] + bias[c])."""
    for t in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _apply_block, (pa, pb, x, mean, scale, bias, y, t))


@numba.njit(inline="always")
def _sums_block(code, args):
    pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias, ch = args
    keep = uses_input(code)
    mu, r, k, b = mean[ch], invstd[ch], scale[ch], bias[ch]
    # the sums over images accumulate in the outputs, with nothing written after them: Numba's
    # parallel twin got other shapes of this body wrong (scalar sums, a final `*=`, dropped)
    dweight[ch] = ZERO
    dbias[ch] = ZERO
    for i in range(x.shape[0]):
        pw, pbias = ZERO, ZERO
        for j in range(x.shape[2]):
            d = x[i, ch, j] - mu
            g = activate_grad(code, pa, pb, dy[i, ch, j], y[i, ch, j], d * k + b if keep else ZERO)
            pbias += g
            pw += g * (d * r)
        dweight[ch] += pw
        dbias[ch] += pbias


@activation_kernel
def grad_sums(code, pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias):
    """dbias[c] = sum of dz, dweight[c] = sum of dz * xhat, dz = dL/d(pre-activation)."""
    for ch in numba.prange(x.shape[1]):
        specialised(code, _sums_block, (pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias, ch))


@numba.njit(inline="always")
def _dx_block(code, args):
    pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias, inv_count, train, dx, t = args
    keep = uses_input(code)
    c = x.shape[1]
    i = t // c
    ch = t - i * c
    mu, k, b = mean[ch], scale[ch], bias[ch]
    mb = dbias[ch] * inv_count if train else ZERO
    mw = dweight[ch] * inv_count * invstd[ch] if train else ZERO
    for j in range(x.shape[2]):
        d = x[i, ch, j] - mu
        g = activate_grad(code, pa, pb, dy[i, ch, j], y[i, ch, j], d * k + b if keep else ZERO)
        dx[i, ch, j] = k * (g - mb - d * mw)


@activation_kernel
def grad_input(code, pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias, inv_count, train, dx):
    """dx = scale (dz - dbias/M - xhat dweight/M) in training (M = N*S: the paths through the
    batch statistics), dx = scale dz with the running statistics (train = 0)."""
    for t in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _dx_block, (pa, pb, dy, y, x, mean, invstd, scale, bias, dweight, dbias,
                                      inv_count, train, dx, t))


@threads.kernel
def update_running(running_mean, running_var, mean, var, momentum, unbias):
    """PyTorch's update: running = (1 - momentum) running + momentum batch; the variance
    unbiased (var * M / (M - 1))."""
    keep = ONE - momentum
    for ch in numba.prange(running_mean.size):
        running_mean[ch] = keep * running_mean[ch] + momentum * mean[ch]
        running_var[ch] = keep * running_var[ch] + momentum * (var[ch] * unbias)
