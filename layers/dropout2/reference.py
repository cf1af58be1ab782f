"""Plain NumPy classic dropout (cuda-convnet2's dropout2): the definition the kernels are
checked against. A unit is kept where its uniform draw u >= 1 - keep (probability keep)."""
import numpy as np


def mask(u, keep):
    """The 0/1 keep mask from uniforms u (the threshold rounded to float32, as the kernel)."""
    return (u >= np.float32(1.0 - keep)).astype(np.float32)


def forward_train(x, u, keep):
    """(y, mask) for the training pass: kept units pass unscaled."""
    m = mask(u, keep)
    return x * m, m


def forward_test(x, keep):
    return x * np.float32(keep)


def backward(dy, m):
    """m: the training mask, or the scalar keep after a test-time forward."""
    return dy * m
