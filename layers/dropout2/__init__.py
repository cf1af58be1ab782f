"""`dropout2`: classic dropout (cuda-convnet2's dropout2; AlexNet-2012's `hs` layer).

In training each unit is kept with probability `keep` and the mask is 0/1 (kept units
are not scaled); at test time every unit is multiplied by `keep`, so a test output is the
expectation of the training one. (`dropout` is the inverted variant: kept units x1/keep in
training, the identity at test.) As with `dropout`, the mask comes only from the draw key
passed as `rng` to `forward` (layers.draw_key), the same on the CPU and CUDA: a unit is kept
where its 32 bits >= threshold(1 - keep), dropout's rule with rate = 1 - keep, so the two
share a kernel.
"""
import numpy as np

from layers import draw_key
from layers.base import Key, Layer
from layers.elementwise_cpu import dropout_backward, dropout_forward, scale
from layers.registry import register


@register
class Dropout2Layer(Layer):
    type = "dropout2"
    examples = ({"keep": 0.6},)
    uses_rng = True
    doc = "classic dropout: 0/1 mask keeping units with probability `keep` in training, x keep at test"
    keys = {"keep": Key(float, 0.5, low=0.0, low_open=True, high=1.0,
                        doc="probability of keeping a unit in training; test outputs are scaled by it")}

    def setup(self, input_shape):
        self._mask = None
        return input_shape

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        shape = (n,) + self.input_shape
        out = {"y": ("activation", shape)}
        if train:
            out["mask"] = ("workspace", shape)
        if backward and need_dx:
            out["dx"] = ("gradient", shape)
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if train and rng is None:
            raise ValueError(f"dropout2 '{self.name}': training needs a draw key (layers.draw_key.DrawKey)")
        b = self.buffers(x.shape[0], "forward", train)      # the mask only in training
        y = b["y"]
        keep = self.cfg["keep"]
        if not train:
            self._mask = None
            scale(np.float32(keep), x.reshape(-1), y.reshape(-1))
            return y
        mask = b["mask"]
        args = draw_key.as_key(rng).kernel_args(self.name, x[0].size)
        dropout_forward(x.reshape(-1), *args, draw_key.threshold(1.0 - keep), np.float32(1.0),
                        mask.reshape(-1), y.reshape(-1))
        self._mask = mask
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        n = dy.shape[0]
        dy = np.ascontiguousarray(dy, dtype=np.float32).reshape((n,) + self.input_shape)
        dx = self.buffers(n, "backward", train=self._mask is not None)["dx"]
        if self._mask is None:          # the latest forward was at test time: y = keep * x
            scale(np.float32(self.cfg["keep"]), dy.reshape(-1), dx.reshape(-1))
        else:
            dropout_backward(dy.reshape(-1), self._mask.reshape(-1), dx.reshape(-1))
        return dx, {}
