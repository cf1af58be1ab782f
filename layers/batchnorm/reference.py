"""Plain NumPy batch normalisation: the readable definition the kernels are checked against.

x3 is the input seen as [N, C, S]: C channels of S = H*W pixels after a conv, or C features
(S = 1) after an fc. Training normalises each channel by the batch's mean and biased variance
over its N*S values; evaluation by the running statistics. y = f(w * xhat + b). Gradients
are of the sum over the batch (the cost divides by N).
"""
import numpy as np

from layers.neuron import reference as neuron


def statistics(x3):
    """(mean, biased variance) per channel."""
    mean = x3.mean(axis=(0, 2))
    return mean, ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))


def forward(x3, weight, bias, mean, var, eps, fn=None):
    """y = f(w (x - mean) / sqrt(var + eps) + b), and the pre-activation."""
    xhat = (x3 - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    a = weight[None, :, None] * xhat + bias[None, :, None]
    return neuron.forward(fn, a), a


def backward(dy3, x3, weight, bias, mean, var, eps, train, fn=None):
    """(dx, dw, db). With `train`, mean and var are the batch's own, so dx carries the paths
    through them; otherwise they are constants (the running statistics)."""
    _, a = forward(x3, weight, bias, mean, var, eps, fn)
    dz = neuron.backward(fn, dy3, a)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
    db = dz.sum(axis=(0, 2))
    dw = (dz * xhat).sum(axis=(0, 2))
    k = (weight * invstd)[None, :, None]
    if not train:
        return k * dz, dw, db
    m = x3.shape[0] * x3.shape[2]
    return k * (dz - db[None, :, None] / m - xhat * dw[None, :, None] / m), dw, db


def update_running(running_mean, running_var, mean, var, momentum, count):
    """PyTorch's rule: running = (1 - momentum) running + momentum batch, the variance unbiased."""
    return ((1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * var * count / (count - 1))
