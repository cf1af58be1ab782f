"""Plain NumPy concat: the definition the layer (the engine's join) is checked against."""
import numpy as np


def forward(xs, mode="channels"):
    if mode == "flat":
        return np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1)
    return np.concatenate(xs, axis=1)


def backward(dy, shapes, mode="channels"):
    """Each input's part of dL/dy, in its own shape."""
    n = dy.shape[0]
    if mode == "flat":
        dy, widths = dy.reshape(n, -1), [int(np.prod(s)) for s in shapes]
    else:
        widths = [s[0] for s in shapes]
    parts = np.split(dy, np.cumsum(widths)[:-1], axis=1)
    return [p.reshape((n,) + tuple(s)) for p, s in zip(parts, shapes)]
