"""`cmrnorm`: cross-map response normalisation (AlexNet's local response normalisation).

    b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ^ beta

window(c) = maps c - size//2 .. c - size//2 + size - 1, clipped to [0, C): cuda-convnet's
window, the same as PyTorch's `local_response_norm` (which pads size//2 maps before and
(size-1)//2 after, dividing by size) and Caffe's ACROSS_CHANNELS LRN.

Note on alpha: the AlexNet paper writes the sum multiplied by alpha alone; cuda-convnet's
code (and Caffe, PyTorch) divide alpha by size, as here. To reproduce a paper alpha of
1e-4 with size 5, use alpha 5e-4.

The backward pass keeps a reference to the forward input (the engine leaves a layer's
input untouched until its backward) and the denominators d. macs() counts size
multiply-adds per output element (the direct definition of the window sum).
"""
import numpy as np

from layers.base import Key, Layer, LayerError
from layers.cmrnorm import cpu
from layers.norm_cpu import beta_mode
from layers.registry import register


@register
class CMRNormLayer(Layer):
    type = "cmrnorm"
    examples = ({"size": 5, "alpha": 0.1, "k": 2}, {"size": 2, "alpha": 0.5, "groups": 2})
    doc = "cross-map response normalisation over `size` neighbouring maps (AlexNet LRN)"
    spatial = True
    keys = {
        "size": Key(int, low=1, doc="number of neighbouring maps in the window"),
        "alpha": Key(float, 1e-4, low=0.0, doc="scale of the sum of squares (divided by size)"),
        "beta": Key(float, 0.75, low=0.0, doc="exponent of the denominator"),
        "k": Key(float, 2.0, low=0.0, low_open=True,   # k <= 0: 0/0 where the inputs are 0
                 doc="constant added to the denominator"),
        "groups": Key(int, 1, low=1, doc="normalise within this many equal channel blocks, "
                      "as the two AlexNet columns do (one column folding both uses groups: 2)"),
    }

    def setup(self, input_shape):
        c = input_shape[0]
        if c % self.groups:
            raise LayerError("groups", f"groups={self.groups} must divide the {c} input channels")
        c //= self.groups
        if self.size > c:
            per = " per group" if self.groups > 1 else ""
            raise LayerError("size", f"cross-map window {self.size} larger than the {c} input channels{per}")
        self.beta_code = beta_mode(self.beta)
        return input_shape

    def macs(self):
        c, h, w = self.input_shape
        return c * h * w * self.size

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        c, h, w = self.input_shape
        grouped = (n * self.groups, c // self.groups, h * w)
        acc, ring = cpu.scratch_shapes(h * w, self.size)
        out = {"y": ("activation", grouped), "d": ("workspace", grouped), "acc": ("workspace", acc)}
        if backward and need_dx:
            out["dx"] = ("gradient", grouped)
            out["ring"] = ("workspace", ring)
        return out

    def _grouped(self, a):
        """[N, C, H, W] -> [N*groups, C/groups, H*W]: a view in which each group is an image."""
        n, c, h, w = a.shape
        return a.reshape(n * self.groups, c // self.groups, h * w)

    def forward(self, x, params, train=False, rng=None):
        n = x.shape[0]
        x = self._grouped(np.ascontiguousarray(x, np.float32))
        b = self.buffers(n, "forward", train)
        y, d = b["y"], b["d"]
        # acc: the kernels' float64 running sums (a float32 buffer of twice the width)
        self._x, self._d, self._acc = x, d, b["acc"].view(np.float64)
        cpu.forward(x, int(self.size), float(self.alpha), float(self.beta), float(self.k),
                    self.beta_code, y, d, self._acc)
        return y.reshape((-1,) + self.output_shape)

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        x = self._x
        g = np.ascontiguousarray(dy, np.float32).reshape(x.shape)
        b = self.buffers(x.shape[0] // self.groups, "backward", need_dx=need_dx)
        dx = b["dx"]
        cpu.backward(x, g, self._d, int(self.size), float(self.alpha), float(self.beta),
                     self.beta_code, dx, self._acc, b["ring"])
        return dx.reshape((-1,) + self.input_shape), {}
