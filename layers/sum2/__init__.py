"""`sum2`: the sum-of-squares cost (cuda-convnet's cost.sum2).

    cost = coeff * (1/N) * sum over the batch of sum_i x[n, i]^2,   d cost / dx = 2 coeff x / N

Convention: cuda-convnet's SumOfSquaresCostLayer takes sum(x^2) over the batch (no 1/2)
with gradient 2 coeff x, and its trainer divides costs and weight steps by the number of
cases. So the cost is the batch MEAN, like the softmax cost here: a learning rate means the
same whichever cost a net ends in.

A sum2 layer is the net's output (is_cost) and ignores labels: `check_labels` accepts any
(None too) and returns None, so a CUDA step uploads none. Its forward is the identity:
`Net.forward` returns what the cost is taken of.
"""
import numpy as np

from layers.base import Key, Layer
from layers.registry import register
from layers.sum2 import cpu
from layers.threads import CHUNK


@register
class Sum2Layer(Layer):
    type = "sum2"
    examples = ({"coeff": 0.5},)
    doc = "sum-of-squares cost: coeff * mean over the batch of sum(x^2); ignores labels"
    is_cost = True
    keys = {"coeff": Key(float, 1.0, low=0.0, low_open=True, doc="weight of the cost")}

    def setup(self, input_shape):
        self._x = None
        self._partial = np.empty(0, np.float64)   # per-chunk sums of squares
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        # forward returns its input; cost() writes dx whether or not dx is needed
        return {"dx": ("gradient", (n,) + self.input_shape)} if backward else {}

    def forward(self, x, params, train=False, rng=None):
        self._x = np.ascontiguousarray(x, np.float32)
        return self._x

    def check_labels(self, labels, n=None):
        """sum2 needs no labels: whatever is given is ignored."""
        return None

    def cost(self, labels=None):
        if self._x is None:
            raise RuntimeError(f"sum2 '{self.name}': cost() before forward()")
        x = self._x
        n = x.shape[0]
        dx = self.buffers(n, "cost")["dx"]
        chunks = max(1, -(-x.size // CHUNK))
        if self._partial.size != chunks:
            self._partial = np.empty(chunks, np.float64)
        cpu.squares_and_grad(x.reshape(-1), np.float32(2.0 * self.coeff / n), dx.reshape(-1),
                             self._partial)
        return self.coeff * float(self._partial.sum()) / n, dx
