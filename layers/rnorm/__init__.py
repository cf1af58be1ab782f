"""`rnorm`: same-map response normalisation (cuda-convnet's `rnorm`, used by its CIFAR-10
18pct net).

    b = a / (k + alpha / size^2 * sum over the size x size window of a^2) ^ beta

The window of pixel (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same
columns, clipped at the image edges; the divisor stays size^2 there (cuda-convnet divides
its scale by size^2). For odd size this is
x * (k + alpha * avg_pool2d(x^2, size, stride=1, padding=size//2, count_include_pad=True))^-beta.
k defaults to 1, cuda-convnet's minDiv.

The backward pass keeps a reference to the forward input (the engine leaves a layer's
input untouched until its backward) and the denominators d. macs() counts size^2
multiply-adds per output element (the direct definition of the window sum).
"""
import numpy as np

from layers.base import Key, Layer, LayerError
from layers.norm_cpu import beta_mode
from layers.registry import register
from layers.rnorm import cpu


@register
class RNormLayer(Layer):
    type = "rnorm"
    examples = ({"size": 3, "alpha": 0.1},)
    doc = "same-map response normalisation over a size x size window (cuda-convnet rnorm)"
    spatial = True
    keys = {
        "size": Key(int, low=1, doc="side of the square window"),
        "alpha": Key(float, 1e-4, low=0.0, doc="scale of the sum of squares (divided by size^2)"),
        "beta": Key(float, 0.75, low=0.0, doc="exponent of the denominator"),
        "k": Key(float, 1.0, low=0.0, low_open=True,   # k <= 0: 0/0 where the inputs are 0
                 doc="constant added to the denominator (cuda-convnet's minDiv)"),
    }

    def setup(self, input_shape):
        c, h, w = input_shape
        if self.size > h or self.size > w:
            raise LayerError("size", f"normalisation window {self.size} larger than input {h}x{w}")
        self.beta_code = beta_mode(self.beta)
        return input_shape

    def macs(self):
        c, h, w = self.input_shape
        return c * h * w * self.size * self.size

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = super().buffer_shapes(n, train, backward, need_dx)
        out["d"] = ("workspace", out["y"][1])
        out["scratch"] = ("workspace", cpu.scratch_shape(*self.input_shape[1:]))
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        b = self.buffers(x.shape[0], "forward", train)
        y, d = b["y"], b["d"]
        cpu.forward(x, int(self.size), float(self.alpha), float(self.beta), float(self.k),
                    self.beta_code, y, d, b["scratch"])
        self._x, self._d, self._scratch = x, d, b["scratch"]     # backward reuses the scratch
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        x = self._x
        g = np.ascontiguousarray(dy, np.float32).reshape(x.shape)
        dx = self.buffers(x.shape[0], "backward", need_dx=need_dx)["dx"]
        cpu.backward(x, g, self._d, int(self.size), float(self.alpha), float(self.beta),
                     self.beta_code, dx, self._scratch)
        return dx, {}
