"""CUDA inverted dropout: layers/elementwise_cuda.py's counter-based mask kernels, scaled by
1 / (1 - rate) in training (the CPU layer's mask: layers.draw_key); the identity at test time."""
import math

import numpy as np

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.draw_key import as_key, threshold
from layers.elementwise_cuda import dropout_mask

KERNELS = []      # its kernels are layers/elementwise_cuda.py's (listed there)


class DropoutCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        rate = float(layer.cfg["rate"])
        self.threshold = threshold(rate)
        self.scale = np.float32(1.0 / (1.0 - rate))
        self._keys = None       # (k0, k1, first counter); None: the latest forward was at test time

    def forward(self, x, params, train, seed, stream):
        if not train:
            self._keys = None
            return x
        if seed is None:
            raise ValueError(f"dropout '{self.name}': training needs a draw key (layers.draw_key.DrawKey)")
        self._keys = as_key(seed).kernel_args(self.name, math.prod(x.shape[1:]))
        self._shape = x.shape
        y = self.buffer("y", x.shape)
        flat = x.reshape(-1)
        dropout_mask[blocks_for(flat.size), BLOCK, stream](
            flat, y.reshape(-1), *self._keys, self.threshold, self.scale)
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        if self._keys is None:
            return dy, {}
        dx = self.buffer("dx", self._shape)
        flat = dy.reshape(-1)
        dropout_mask[blocks_for(flat.size), BLOCK, stream](
            flat, dx.reshape(-1), *self._keys, self.threshold, self.scale)
        return dx, {}


def make(layer):
    return DropoutCuda(layer)
