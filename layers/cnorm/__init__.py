"""`cnorm`: same-map contrast normalisation (cuda-convnet's `cnorm`, ContrastNormLayer).

    u = x - (mean of x over the window of each pixel)
    b = x / (k + alpha / size^2 * sum over the window of u^2) ^ beta

From cuda-convnet's layer.cu and conv_util.cu (notes: shared/notes/cuda-convnet.md 1.3):
fpropActs takes the window means with convLocalPool(..., size, -size/2, stride 1,
AvgPooler()), whose divisor is the number of in-bounds pixels (regionSize), subtracts them
from the input (_meanDiffs), and convContrastNorm forms the denominators from the squared
mean differences with the parser's scale/size^2 and multiplies the *input* (not u) by
d^-pow. The window of (y, x) is rows y - size//2 .. y - size//2 + size - 1 and the same
columns, clipped at the edges, as in rnorm; the divisor of the square sum stays size^2
there. k defaults to 1, cc1's hard-coded minDiv.

The gradient is exact: through the direct x, the squares of u, and the window means
(cuda-convnet's convContrastNormUndo reuses rnorm's undo with u in place of x, dropping
the path through the means; finite differences reject that). Forward keeps u and the
denominators d for backward, and a reference to its input.
"""
import numpy as np

from layers.cnorm import cpu
from layers.registry import register
from layers.rnorm import RNormLayer


@register
class CNormLayer(RNormLayer):
    type = "cnorm"
    examples = ({"size": 3, "alpha": 0.1},)
    doc = "same-map contrast normalisation over a size x size window (cuda-convnet cnorm)"

    def macs(self):
        c, h, w = self.input_shape
        return 2 * c * h * w * self.size * self.size      # the window means and square sums

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        out = super().buffer_shapes(n, train, backward, need_dx)
        out["u"] = ("workspace", out["y"][1])
        del out["scratch"]                 # rnorm's per-worker planes: cnorm's kernels differ
        return out

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        b = self.buffers(x.shape[0], "forward", train)
        y, u, d = b["y"], b["u"], b["d"]
        cpu.forward(x, int(self.size), float(self.alpha), float(self.beta), float(self.k),
                    self.beta_code, u, y, d)
        self._x, self._u, self._d = x, u, d
        return y

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        x = self._x
        g = np.ascontiguousarray(dy, np.float32).reshape(x.shape)
        dx = self.buffers(x.shape[0], "backward", need_dx=need_dx)["dx"]
        cpu.backward(x, g, self._u, self._d, int(self.size), float(self.alpha), float(self.beta),
                     self.beta_code, dx)
        return dx, {}
