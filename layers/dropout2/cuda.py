"""CUDA classic dropout: layers/elementwise_cuda.py's counter-based mask kernels with rate =
1 - keep and scale 1 (a 0/1 mask recomputed from the draw key in backward, no stored mask:
the CPU layer's mask, layers.draw_key), and its scale kernel for the test-time x keep."""
import math

import numpy as np

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.draw_key import as_key, threshold
from layers.elementwise_cuda import dropout_mask, scale

KERNELS = []      # its kernels are layers/elementwise_cuda.py's (listed there)


class Dropout2Cuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.keep = float(layer.cfg["keep"])
        self.threshold = threshold(1.0 - self.keep)
        self._keys = None       # None: the latest forward was at test time

    def _masked(self, kernel, src, tag, stream):
        out = self.buffer(tag, src.shape)
        flat = src.reshape(-1)
        kernel[blocks_for(flat.size), BLOCK, stream](flat, out.reshape(-1), *self._keys,
                                                     self.threshold, np.float32(1.0))
        return out

    def forward(self, x, params, train, seed, stream):
        if not train:
            self._keys = None
            return scale(self.keep, x, self.buffer("y", x.shape), stream)
        if seed is None:
            raise ValueError(f"dropout2 '{self.name}': training needs a draw key (layers.draw_key.DrawKey)")
        self._keys = as_key(seed).kernel_args(self.name, math.prod(x.shape[1:]))
        return self._masked(dropout_mask, x, "y", stream)

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        dy = dy.reshape((dy.shape[0],) + tuple(self.layer.input_shape))
        if self._keys is None:
            return scale(self.keep, dy, self.buffer("dx", dy.shape), stream), {}
        return self._masked(dropout_mask, dy, "dx", stream), {}


def make(layer):
    return Dropout2Cuda(layer)
