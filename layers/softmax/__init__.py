"""`softmax`: the net's output layer and its cost (cuda-convnet's softmax + logreg).

forward gives row probabilities [N, D] (numerically stable: the row max is
subtracted). `cost(labels)` is the mean cross-entropy, computed in float64 from the
log-softmax of the kept logits, with its gradient (p - onehot) / N w.r.t. the layer's
input. With `label_smoothing` e > 0 the target is (1 - e) onehot + e / D (PyTorch's
CrossEntropyLoss(label_smoothing=e)): cost (1 - e)(lse - x_label) + e (lse - mean(x)),
gradient (p - target) / N; train.label_smoothing sets it for training.
`backward(dy)` is the plain softmax Jacobian-vector product, for use as a
non-final layer. Several inputs are flattened and concatenated (join "flat").
"""
import numpy as np

from layers.base import Key, Layer
from layers.registry import register
from layers.softmax import cpu


@register
class SoftmaxLayer(Layer):
    type = "softmax"
    examples = ({},)
    doc = "softmax probabilities; as the output layer, the mean cross-entropy cost (logreg)"
    join = "flat"
    is_cost = True
    classifies = True
    keys = {"label_smoothing": Key(float, 0.0, low=0.0, high=1.0,
                                   doc="cost target (1 - e) onehot + e / classes (train.label_smoothing sets it)")}

    def setup(self, input_shape):
        self._p = None
        self._lse = None
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        shape = (n,) + self.output_shape
        out = {"p": ("activation", shape)}
        if backward:
            out["dx"] = ("gradient", shape)    # cost() writes it whether or not dx is needed
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1)
        n, d = x.shape
        p = self.buffers(n, "forward", train)["p"]
        if self._lse is None or self._lse.shape != (n,):
            self._lse = np.empty(n, np.float64)
        cpu.forward(x, p, self._lse)
        self._x, self._p = x, p
        return p

    def check_labels(self, labels, n=None):
        """labels as a contiguous int64 [N] array, or ValueError saying what is wrong.

        n: the batch size (default: that of the latest forward)."""
        d = self.output_shape[0]
        n = self._p.shape[0] if n is None else n
        arr = np.asarray(labels)
        if arr.ndim != 1:
            raise ValueError(f"softmax '{self.name}': labels must be a 1-D array of class indices, "
                             f"got shape {arr.shape}")
        if arr.shape[0] != n:
            raise ValueError(f"softmax '{self.name}': got {arr.shape[0]} labels for a batch of {n}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"softmax '{self.name}': labels must be integers, got dtype {arr.dtype}")
        bad = np.flatnonzero((arr < 0) | (arr >= d))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"softmax '{self.name}': label {int(arr[i])} (at index {i}) is out of "
                             f"range for {d} classes (0 <= label < {d})")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def cost(self, labels):
        if self._p is None:
            raise RuntimeError(f"softmax '{self.name}': cost() before forward()")
        labels = self.check_labels(labels)
        dx = self.buffers(self._p.shape[0], "cost")["dx"]
        if self.label_smoothing:
            loss = cpu.xent_smoothed(self._x, self._lse, labels, self._p, dx, self.label_smoothing)
        else:
            loss = cpu.xent(self._x, self._lse, labels, self._p, dx)
        return float(loss), dx

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        p = self._p
        dy = np.ascontiguousarray(dy, dtype=np.float32).reshape(p.shape)
        dx = self.buffers(p.shape[0], "backward", need_dx=need_dx)["dx"]
        cpu.backward(p, dy, dx)
        return dx, {}
