"""Plain NumPy fully-connected layer: the readable definition the kernels are checked against.

y = f(x @ W.T + b) with W [outputs, D], b [outputs] (PyTorch's layout); gradients are
of the sum over the batch.
"""

from layers.neuron import reference as neuron


def forward(x, weight, bias, fn=None):
    """x [N, D] -> (y [N, outputs], pre-activation a [N, outputs])."""
    a = x @ weight.T + bias
    return neuron.forward(fn, a), a


def backward(dy, x, weight, a, fn=None):
    """(dx, dW, db) from dL/dy, the input x and the pre-activation a."""
    dz = neuron.backward(fn, dy, a)
    return dz @ weight, dz.T @ x, dz.sum(axis=0)
