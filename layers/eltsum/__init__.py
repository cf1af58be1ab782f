"""`eltsum`: the element-wise weighted sum of 2+ inputs of one shape (cuda-convnet's eltsum).

    y = f(sum_i coeffs[i] * x_i),        dL/dx_i = coeffs[i] * dL/dz,  dL/dz = f'(z) dL/dy

`coeffs` (one number per input) defaults to all 1; cuda-convnet reads it from the layer
definition (cc1) or the params file (cc2). The inputs are not joined (join "separate"):
forward gets one array per input and backward returns one gradient per input. A
coefficient of exactly 1 hands dL/dz itself back to that input (no copy).

`neuron` (not cuda-convnet's: its residual nets did not exist) fuses an activation f after
the sum, a ResNet block's closing ReLU: one pass over the output instead of two, and one
layer call less.
"""
import math

import numpy as np

from layers.base import FLOAT32_MAX, Key, Layer, LayerError, check_same_shapes, shown
from layers.elementwise_cpu import scale
from layers.eltsum import cpu
from layers.neuron import cpu as neuron_cpu
from layers.neuron.spec import NEURON_KEY, parse as parse_neuron
from layers.registry import register


def _coefficients(value, count):
    if value is None:
        return (1.0,) * count
    if not isinstance(value, list) or len(value) != count:
        raise LayerError("coeffs", f"must be a list of {count} numbers, one per input, got {shown(value)}")
    for c in value:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) \
                or abs(c) > FLOAT32_MAX:
            raise LayerError("coeffs", f"must hold finite float32 numbers, got {shown(c)} in {shown(value)}")
    return tuple(float(c) for c in value)


@register
class EltSumLayer(Layer):
    type = "eltsum"
    examples = ({"coeffs": [1.0, -0.5]}, {"neuron": "relu"}, {"coeffs": [2.0, -1.0], "neuron": "abs"})
    doc = "element-wise weighted sum of 2+ inputs of one shape, with a fused activation"
    join = "separate"
    keys = {"coeffs": Key(list, None, doc="one multiplier per input (default: all 1)"),
            "neuron": NEURON_KEY}

    def setup(self, input_shape):
        check_same_shapes(self)
        self.coefficients = _coefficients(self.cfg["coeffs"], len(self.input_shapes))
        self.act = parse_neuron(self.cfg["neuron"])
        return input_shape

    def macs(self):
        return len(self.input_shapes) * math.prod(self.output_shape)

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        shape = (n,) + self.output_shape
        out = {"y": ("activation", shape)}
        if self.act.needs_input:                   # abs, square: the gradient needs the sum
            out["pre"] = ("workspace", shape)
        if backward and need_dx:
            if not self.act.identity:
                out["dz"] = ("gradient", shape)
            out.update({f"dx{i}": ("gradient", shape)
                        for i, c in enumerate(self.coefficients) if c != 1.0})
        return out

    def forward(self, xs, params, train=False, rng=None):
        flat = [np.ascontiguousarray(x, np.float32).reshape(-1) for x in xs]
        b = self.buffers(xs[0].shape[0], "forward", train)
        y = b["y"]
        out = y.reshape(-1)
        pre = b["pre"].reshape(-1) if self.act.needs_input else out
        for args in self.sum_calls(flat, out):
            cpu.axpby(*args, out, pre)
        self._y, self._pre = out, pre
        return y

    def sum_calls(self, flat, out):
        """The axpby calls (CPU and CUDA alike) summing the flat inputs into `out`, each as
        (a, x, b, z, code, pa, pb, keep): the first pair, then each further input added to out;
        the activation (and keeping the sum, for abs and square) on the last call only."""
        c = self.coefficients
        terms = [(c[0], flat[0], c[1], flat[1])] + [(ci, x, 1.0, out) for ci, x in zip(c[2:], flat[2:])]
        ident = parse_neuron(None).kernel_args()
        return [(np.float32(a), x, np.float32(b), z,
                 *(self.act.kernel_args() if last else ident), self.act.needs_input and last)
                for (a, x, b, z), last in zip(terms, [False] * (len(terms) - 1) + [True])]

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        dy = np.ascontiguousarray(dy, np.float32).reshape((dy.shape[0],) + self.output_shape)
        b = self.buffers(dy.shape[0], "backward", need_dx=need_dx)   # dx{i} where coeffs[i] != 1
        if not self.act.identity:                  # dL/dz, through the activation
            dz = b["dz"]
            neuron_cpu.backward(*self.act.kernel_args(), dy.reshape(-1), self._y, self._pre, dz.reshape(-1))
            dy = dz
        dxs = []
        for i, c in enumerate(self.coefficients):
            if c == 1.0:
                dxs.append(dy)
                continue
            dx = b[f"dx{i}"]
            scale(np.float32(c), dy.reshape(-1), dx.reshape(-1))
            dxs.append(dx)
        return dxs, {}
