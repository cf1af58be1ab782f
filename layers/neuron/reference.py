"""Plain NumPy activations: the readable definition the kernels are checked against.

`fn` is a neuron name as in a net file ("relu", "tanh[1.7159,0.6667]", None for none).
"""
import numpy as np

from layers.neuron import spec


def forward(fn, x):
    n = spec.parse(fn)
    a, b = n.a, n.b
    with np.errstate(invalid="ignore", over="ignore"):   # sqrt(x < 0) is NaN, as in the kernels
        return {
            spec.IDENT: lambda: x.copy(),
            spec.LINEAR: lambda: a * x + b,
            spec.RELU: lambda: np.maximum(x, 0),
            spec.BRELU: lambda: np.minimum(np.maximum(x, 0), a),
            spec.TANH: lambda: a * np.tanh(b * x),
            spec.LOGISTIC: lambda: 1 / (1 + np.exp(-x)),
            spec.SOFTRELU: lambda: np.logaddexp(0, x),
            spec.ABS: lambda: np.abs(x),
            spec.SQUARE: lambda: x * x,
            spec.SQRT: lambda: np.sqrt(x),
            spec.LEAKY: lambda: np.where(x > 0, x, a * x),
            spec.ELU: lambda: np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1)),
            spec.SELU: lambda: spec.SELU_SCALE * np.where(
                x > 0, x, spec.SELU_ALPHA * (np.exp(np.minimum(x, 0)) - 1)),
        }[n.code]()


def backward(fn, g, x):
    """dL/dx given dL/dy = g and the input x (f'(x) from the formula, not from the output)."""
    n = spec.parse(fn)
    a, b = n.a, n.b
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        slope = {
            spec.IDENT: lambda: np.ones_like(x),
            spec.LINEAR: lambda: np.full_like(x, a),
            spec.RELU: lambda: (x > 0).astype(x.dtype),
            spec.BRELU: lambda: ((x > 0) & (x < a)).astype(x.dtype),
            spec.TANH: lambda: a * b * (1 - np.tanh(b * x) ** 2),
            spec.LOGISTIC: lambda: forward(fn, x) * (1 - forward(fn, x)),
            spec.SOFTRELU: lambda: 1 / (1 + np.exp(-x)),
            spec.ABS: lambda: np.sign(x),
            spec.SQUARE: lambda: 2 * x,
            spec.SQRT: lambda: 0.5 / np.sqrt(x),
            spec.LEAKY: lambda: np.where(x > 0, 1.0, a).astype(x.dtype),
            spec.ELU: lambda: np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0))).astype(x.dtype),
            spec.SELU: lambda: spec.SELU_SCALE * np.where(
                x > 0, 1.0, spec.SELU_ALPHA * np.exp(np.minimum(x, 0))).astype(x.dtype),
        }[n.code]()
        return g * slope
