"""Numba CPU kernels for the fully-connected layer.

The matrix products run in BLAS (numpy.matmul with out=, outside njit); these kernels
do the element-wise work around them: bias + fused activation after the forward
product, and the activation gradient + bias gradient before the backward products.
"""
import numba
import numpy as np

from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised, uses_input

BLOCK = 512   # columns per parallel task


@numba.njit(inline="always")
def _bias_act_block(code, args):
    pa, pb, y, bias, pre, t = args
    m = y.shape[1]
    nb = (m + BLOCK - 1) // BLOCK
    r = t // nb
    c0 = (t % nb) * BLOCK
    c1 = min(m, c0 + BLOCK)
    ys, bs = y[r, c0:c1], bias[c0:c1]       # slices looped from 0 vectorise (threads.chunk_slice)
    if uses_input(code):
        pres = pre[r, c0:c1]
        for c in range(ys.size):
            a = ys[c] + bs[c]
            pres[c] = a
            ys[c] = activate(code, pa, pb, a)
    else:
        for c in range(ys.size):
            ys[c] = activate(code, pa, pb, ys[c] + bs[c])


@activation_kernel(split="forward")
def bias_act(code, pa, pb, y, bias, pre):
    """y[r, c] = f(y[r, c] + bias[c]) in place for the activation (code, pa, pb); where
    the gradient needs the pre-activation (abs, square), pre keeps y + bias.

    Tasks are (row, column block) pairs, so a batch of one still spreads over threads."""
    n, m = y.shape
    for t in numba.prange(n * ((m + BLOCK - 1) // BLOCK)):
        specialised(code, _bias_act_block, (pa, pb, y, bias, pre, t))


@numba.njit(inline="always")
def _grad_block(code, args):
    pa, pb, dy, y, pre, dz, dbias, b = args
    n, m = dy.shape
    c0 = b * BLOCK
    c1 = min(m, c0 + BLOCK)
    dbs = dbias[c0:c1]                      # slices looped from 0 vectorise (threads.chunk_slice)
    for c in range(dbs.size):
        dbs[c] = np.float32(0.0)
    for r in range(n):
        dys, ys, dzs = dy[r, c0:c1], y[r, c0:c1], dz[r, c0:c1]
        if uses_input(code):
            pres = pre[r, c0:c1]
            for c in range(dys.size):
                g = activate_grad(code, pa, pb, dys[c], ys[c], pres[c])
                dzs[c] = g
                dbs[c] += g
        else:
            for c in range(dys.size):
                g = activate_grad(code, pa, pb, dys[c], ys[c], np.float32(0.0))
                dzs[c] = g
                dbs[c] += g


@activation_kernel(split="backward", grad="dy")
def grad_act_bias(code, pa, pb, dy, y, pre, dz, dbias):
    """dz = dL/d(pre-activation) from dy and the output y (pre only for abs, square);
    dbias[c] = sum over rows of dz[:, c]. Parallel over column blocks."""
    for b in numba.prange((dy.shape[1] + BLOCK - 1) // BLOCK):
        specialised(code, _grad_block, (pa, pb, dy, y, pre, dz, dbias, b))
