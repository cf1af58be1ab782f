"""CUDA kernels for the element-wise activation layer (one thread per element).

The device functions `act` / `act_grad` (mirroring layers/neuron/cpu.py exactly, all
float32) have one definition, in layers/cudagemm.py, shared with conv and fc; they are
re-exported here for pool and any other layer that fuses an activation. They are inlined
at the Numba IR level (inline="always"): a plain `device=True` call makes
`cuda.compile_ptx` ask the driver for the current device's compute capability, which fails
on a machine without a GPU, where every kernel's PTX is checked.

abs (code 4) needs the pre-activation for its gradient: the layer keeps a reference to its
forward input (the engine leaves a layer's input untouched until its backward).
"""
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.cudagemm import act, act_grad  # noqa: F401  (re-exported for pool)
from layers.neuron.cpu import CODES, NEEDS_INPUT  # noqa: F401  (the shared codes)


@cuda.jit
def neuron_forward(code, x, y):
    """y = f(x), flat float32."""
    i = cuda.grid(1)
    if i < x.size:
        y[i] = act(code, x[i])


@cuda.jit
def neuron_backward(code, g, y, a, dx):
    """dx = dL/da, flat float32; `a` (the input) is read only for abs."""
    i = cuda.grid(1)
    if i < g.size:
        av = a[i] if code == 4 else float32(0.0)
        dx[i] = act_grad(code, g[i], y[i], av)


KERNELS = [
    (neuron_forward, "void(int64, float32[::1], float32[::1])"),
    (neuron_backward, "void(int64, float32[::1], float32[::1], float32[::1], float32[::1])"),
]


class NeuronCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.code = int(CODES[layer.fn])
        self._x = self._y = None

    def forward(self, x, params, train, seed, stream):
        y = self.buffer("y", x.shape)
        flat = x.reshape(-1)
        neuron_forward[blocks_for(flat.size), BLOCK, stream](self.code, flat, y.reshape(-1))
        self._x, self._y = x, y
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        y = self._y
        dx = self.buffer("dx", y.shape)
        yf = y.reshape(-1)
        a = self._x.reshape(-1) if self.code == 4 else yf
        neuron_backward[blocks_for(yf.size), BLOCK, stream](
            self.code, dy.reshape(-1), yf, a, dx.reshape(-1))
        return dx, {}


def make(layer):
    return NeuronCuda(layer)
