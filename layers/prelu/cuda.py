"""CUDA PReLU (the twin of cpu.py) on the input seen as [N, C, S]: one thread per value for
y and dx; the slope gradient per channel by one block per channel (a shared-memory tree), and
for a shared slope one block summing the channels in order (deterministic, no atomics)."""
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, block_sum, blocks_for


@cuda.jit
def forward_kernel(x, slope, y):
    t = cuda.grid(1)
    n, c, s = x.shape
    if t < n * c * s:
        i = t // (c * s)
        rest = t - i * c * s
        ch = rest // s
        j = rest - ch * s
        v = x[i, ch, j]
        y[i, ch, j] = v if v > float32(0.0) else slope[ch % slope.size] * v


@cuda.jit
def dx_kernel(dy, x, slope, dx):
    t = cuda.grid(1)
    n, c, s = x.shape
    if t < n * c * s:
        i = t // (c * s)
        rest = t - i * c * s
        ch = rest // s
        j = rest - ch * s
        g = dy[i, ch, j]
        dx[i, ch, j] = g if x[i, ch, j] > float32(0.0) else slope[ch % slope.size] * g


@cuda.jit
def slope_sums(dy, x, out):
    """Block c: out[c] = sum of dy * x over x[:, c, :] <= 0."""
    sh = cuda.shared.array(BLOCK, float32)
    ch = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n, s = x.shape[0], x.shape[2]
    acc = float32(0.0)
    for t in range(tid, n * s, BLOCK):
        i = t // s
        v = x[i, ch, t - i * s]
        if v <= float32(0.0):
            acc += dy[i, ch, t - i * s] * v
    sh[tid] = acc
    total = block_sum(sh, tid, BLOCK)
    if tid == 0:
        out[ch] = total


@cuda.jit
def sum_channels(per_channel, out):
    """One block: out[0] = sum of per_channel."""
    sh = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    acc = float32(0.0)
    for j in range(tid, per_channel.size, BLOCK):
        acc += per_channel[j]
    sh[tid] = acc
    total = block_sum(sh, tid, BLOCK)
    if tid == 0:
        out[0] = total


_A1, _A3 = "float32[::1]", "float32[:, :, ::1]"
KERNELS = [
    (forward_kernel, f"void({_A3}, {_A1}, {_A3})"),
    (dx_kernel, f"void({_A3}, {_A3}, {_A1}, {_A3})"),
    (slope_sums, f"void({_A3}, {_A3}, {_A1})"),
    (sum_channels, f"void({_A1}, {_A1})"),
]


class PReLUCuda(CudaLayer):
    def _view(self, a):
        lay = self.layer
        return a.reshape(a.shape[0], lay.channels, lay.pixels)

    def forward(self, x, params, train, seed, stream):
        lay = self.layer
        y = self.buffer("y", (x.shape[0],) + tuple(lay.output_shape))
        self._x3 = self._view(x)
        forward_kernel[blocks_for(y.size), BLOCK, stream](self._x3, params["weight"], self._view(y))
        return y

    def backward(self, dy, params, need_dx, stream):
        lay = self.layer
        x3 = self._x3
        n = x3.shape[0]
        dy3 = dy.reshape(x3.shape)
        dw = self.buffer("dweight", lay.param_shapes()["weight"])
        per_channel = self.buffer("dslope", (lay.channels,)) if lay.shared else dw
        slope_sums[lay.channels, BLOCK, stream](dy3, x3, per_channel)
        if lay.shared:
            sum_channels[1, BLOCK, stream](per_channel, dw)
        if not need_dx:
            return None, {"weight": dw}
        dx = self.buffer("dx", (n,) + tuple(lay.input_shape))
        dx_kernel[blocks_for(dx.size), BLOCK, stream](dy3, x3, params["weight"], self._view(dx))
        return dx, {"weight": dw}


def make(layer):
    return PReLUCuda(layer)
