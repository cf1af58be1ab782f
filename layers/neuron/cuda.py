"""CUDA kernels for the element-wise activation layer (one thread per element), and the
device functions every CUDA kernel that applies an activation inlines (conv, fc, pool).

`activate(code, pa, pb, x)` / `activate_grad(code, pa, pb, g, y, x)` mirror
layers/neuron/cpu.py exactly, all float32 (codes and parameters: layers/neuron/spec.py).
sqrt of x < 0 returns NaN explicitly: the simulator runs kernels as Python, where
math.sqrt of a negative raises. They are inlined at the Numba IR level (inline="always"):
a plain `device=True` call makes `cuda.compile_ptx` ask the driver for the current
device's compute capability, which fails on a machine without a GPU, where every
kernel's PTX is checked.

abs and square need the pre-activation for their gradient: the layer keeps a reference to
its forward input (the engine leaves a layer's input untouched until its backward).
"""
import math

from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.neuron.spec import (ABS, BRELU, ELU, LEAKY, LINEAR, LOGISTIC, RELU, SELU, SELU_ALPHA,
                                SELU_SCALE, SOFTRELU, SQRT, SQUARE, TANH)

SCALE, SCALE_ALPHA = SELU_SCALE, SELU_SCALE * SELU_ALPHA    # float32(...) at each use

INLINE = {"device": True, "inline": "always"}


@cuda.jit(**INLINE)
def uses_input(code):
    """True where activate_grad reads the pre-activation x (spec.NEEDS_INPUT)."""
    return code == ABS or code == SQUARE


@cuda.jit(**INLINE)
def activate(code, pa, pb, x):
    """f(x) for the activation `code` with parameters pa, pb."""
    if code == RELU:
        return x if x > float32(0.0) else float32(0.0)
    if code == TANH:
        return pa * math.tanh(pb * x)
    if code == LOGISTIC:
        return float32(1.0) / (float32(1.0) + math.exp(-x))
    if code == ABS:
        return abs(x)
    if code == LINEAR:
        return pa * x + pb
    if code == BRELU:
        return min(max(x, float32(0.0)), pa)
    if code == SOFTRELU:          # log(1 + e^x) without overflow: max(x, 0) + log(1 + e^-|x|)
        return max(x, float32(0.0)) + math.log1p(math.exp(-abs(x)))
    if code == SQUARE:
        return x * x
    if code == SQRT:
        if x < float32(0.0):
            return float32(math.nan)
        return math.sqrt(x)
    if code == LEAKY:
        return x if x > float32(0.0) else pa * x
    if code == ELU:
        return x if x > float32(0.0) else pa * math.expm1(x)
    if code == SELU:
        return float32(SCALE) * x if x > float32(0.0) else float32(SCALE_ALPHA) * math.expm1(x)
    return x


@cuda.jit(**INLINE)
def activate_grad(code, pa, pb, g, y, x):
    """dL/dx from dL/dy = g, the output y and (abs, square only) the pre-activation x."""
    if code == RELU:
        return g if y > float32(0.0) else float32(0.0)
    if code == TANH:              # a b (1 - tanh^2) = (b / a) (a - y)(a + y)
        return g * (pb / pa) * (pa - y) * (pa + y)
    if code == LOGISTIC:
        return g * y * (float32(1.0) - y)
    if code == ABS:
        if x > float32(0.0):
            return g
        if x < float32(0.0):
            return -g
        return float32(0.0)
    if code == LINEAR:
        return g * pa
    if code == BRELU:
        return g if y > float32(0.0) and y < pa else float32(0.0)
    if code == SOFTRELU:          # sigmoid(x) = 1 - e^-y
        return -g * math.expm1(-y)
    if code == SQUARE:
        return float32(2.0) * x * g
    if code == SQRT:              # g / 0 at y = 0: +-inf (NaN for g = 0), as cuda-convnet
        return float32(0.5) * g / y
    if code == LEAKY:
        return g if y > float32(0.0) else g * pa
    if code == ELU:               # a e^x = y + a where x <= 0
        return g if y > float32(0.0) else g * (y + pa)
    if code == SELU:              # s a e^x = y + s a where x <= 0
        return g * float32(SCALE) if y > float32(0.0) else g * (y + float32(SCALE_ALPHA))
    return g


@cuda.jit
def neuron_forward(code, pa, pb, x, y):
    """y = f(x), flat float32."""
    i = cuda.grid(1)
    if i < x.size:
        y[i] = activate(code, pa, pb, x[i])


@cuda.jit
def neuron_backward(code, pa, pb, g, y, x, dx):
    """dx = dL/dx, flat float32; `x` (the input) is read only where uses_input(code)."""
    i = cuda.grid(1)
    if i < g.size:
        xv = x[i] if uses_input(code) else float32(0.0)
        dx[i] = activate_grad(code, pa, pb, g[i], y[i], xv)


KERNELS = [
    (neuron_forward, "void(int64, float32, float32, float32[::1], float32[::1])"),
    (neuron_backward, "void(int64, float32, float32, float32[::1], float32[::1], float32[::1], "
                      "float32[::1])"),
]


class NeuronCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.args = layer.act.kernel_args()
        self._x = self._y = None

    def forward(self, x, params, train, seed, stream):
        y = self.buffer("y", x.shape)
        flat = x.reshape(-1)
        neuron_forward[blocks_for(flat.size), BLOCK, stream](*self.args, flat, y.reshape(-1))
        self._x, self._y = x, y
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        y = self._y
        dx = self.buffer("dx", y.shape)
        yf = y.reshape(-1)
        x = self._x.reshape(-1) if self.layer.act.needs_input else yf
        neuron_backward[blocks_for(yf.size), BLOCK, stream](*self.args, dy.reshape(-1), yf, x,
                                                             dx.reshape(-1))
        return dx, {}


def make(layer):
    return NeuronCuda(layer)
