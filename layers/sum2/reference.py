"""Plain NumPy sum-of-squares cost: the readable definition the kernels are checked against."""
import numpy as np


def cost(x, coeff=1.0):
    """(coeff * mean over the batch of sum(x_n^2), its gradient 2 coeff x / N), in float64."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    return float(coeff * np.sum(x * x) / n), 2 * coeff * x / n
