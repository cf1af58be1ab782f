"""Plain NumPy classic dropout (cuda-convnet2's dropout2): the definition the kernels are
checked against. A unit is kept with probability keep: dropout's keep decision
(layers/dropout/reference.py's `kept`) with rate = 1 - keep."""
import numpy as np


def mask(keep):
    """The 0/1 mask from the boolean keep decisions."""
    return keep.astype(np.float32)


def forward_train(x, keep):
    """(y, mask) for the training pass: kept units pass unscaled."""
    m = mask(keep)
    return x * m, m


def forward_test(x, keep):
    return x * np.float32(keep)


def backward(dy, m):
    """m: the training mask, or the scalar keep after a test-time forward."""
    return dy * m
