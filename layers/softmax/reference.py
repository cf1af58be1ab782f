"""Plain NumPy softmax + cross-entropy (cuda-convnet's softmax and logreg cost):
the readable definition the kernels are checked against."""
import numpy as np


def log_softmax(x):
    """Row-wise log-softmax, stable for large logits (the row max is subtracted)."""
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def forward(x):
    """Row-wise softmax probabilities."""
    return np.exp(log_softmax(x))


def cost(x, labels, smoothing=0.0):
    """(mean cross-entropy, d cost / d x) for logits x [N, D] and integer labels [N], against
    the target (1 - smoothing) onehot + smoothing / D."""
    n, d = x.shape
    logp = log_softmax(x.astype(np.float64))
    if not smoothing:
        loss = -logp[np.arange(n), labels].mean()
        dx = np.exp(logp)
        dx[np.arange(n), labels] -= 1.0
        return float(loss), dx / n
    target = np.full((n, d), smoothing / d)
    target[np.arange(n), labels] += 1.0 - smoothing
    loss = -(target * logp).sum(axis=1).mean()
    return float(loss), (np.exp(logp) - target) / n


def backward(p, dy):
    """Softmax Jacobian-vector product: dx = p * (dy - sum(dy * p, axis=1))."""
    return p * (dy - (dy * p).sum(axis=1, keepdims=True))
