"""The CUDA side of a layer: device buffers and the forward/backward protocol.

Imported only when a CUDA device (or the CUDA simulator) is used, never by a CPU-only run.
Each layer type's `layers/<type>/cuda.py` defines `make(layer)` returning a `CudaLayer`
subclass instance that wraps the CPU `Layer` object (which holds the config and shapes).

Protocol (all arrays are numba device arrays, float32, C-contiguous, NCHW or [N, D]):

    impl.forward(x, params, train, seed, stream) -> y
        x: the joined input [N, *layer.input_shape] (join "separate": a list, one array
        per input, and backward returns a list of dx); params: {"weight": dev, "bias": dev}
        (or {}); seed: the pass's draw key (layers.draw_key: dropout's masks); stream: a CUDA stream.
    impl.backward(dy, params, need_dx, stream) -> (dx or None, {param: dev grad})
        gradients of the SUM over the batch (the cost divides by N), as on the CPU.
    impl.cost(labels, stream) -> (loss, dx)        cost layers only
        labels: int32 device [N]; loss: float32 device array of shape (1,) holding the mean
        cross-entropy (no host copy here); dx: gradient w.r.t. the layer's input.

Everything runs on `stream` (kernel launches `kernel[grid, block, stream](...)`, no host
synchronisation, no device->host copy). Outputs and gradients may be buffers reused by the
next call with the same batch size; backward uses what the latest forward kept.
"""
import math

import numpy as np
from numba import cuda

BLOCK = 128   # threads per block for 1-D launches (the simulator costs ~100 us per thread)


def blocks_for(n, block=BLOCK):
    return max(1, math.ceil(n / block))


@cuda.jit(device=True, inline="always")
def block_sum(sh, tid, n):
    """sh[0] = sum(sh[:n]) by a shared-memory tree (n a power of two, the block's width);
    every thread of the block must call it, since it synchronises."""
    cuda.syncthreads()
    step = n // 2
    while step > 0:
        if tid < step:
            sh[tid] += sh[tid + step]
        cuda.syncthreads()
        step //= 2
    return sh[0]


@cuda.jit(device=True, inline="always")
def covering_outputs(pos, k, stride, count):
    """[lo, hi): the outputs o < count whose window reads padded position pos, i.e.
    0 <= pos - o*stride < k (lo: the ceiling of a non-negative quotient); col2im's bounds."""
    lo = (pos - k + stride) // stride if pos >= k else 0
    return lo, min(count, pos // stride + 1)


class CudaLayer:
    def __init__(self, layer):
        self.layer = layer
        self._buffers = {}

    @property
    def name(self):
        return self.layer.name

    def buffer(self, tag, shape, dtype=np.float32):
        """A device array kept between calls and reused while its shape holds."""
        shape = tuple(int(v) for v in shape)
        buf = self._buffers.get(tag)
        if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
            buf = cuda.device_array(shape, dtype=dtype)
            self._buffers[tag] = buf
        return buf

    def forward(self, x, params, train, seed, stream):
        raise NotImplementedError(f"{self.layer.type}: no CUDA forward")

    def backward(self, dy, params, need_dx, stream):
        raise NotImplementedError(f"{self.layer.type}: no CUDA backward")

    def cost(self, labels, stream):
        raise NotImplementedError(f"{self.layer.type} is not a cost layer")


# ---- joining several inputs, on the device (the CUDA twin of base.join_inputs) -------------
@cuda.jit
def _copy_cols(src, dst, offset):
    """dst[n, offset + j] = src[n, j] for 2-D row-major views."""
    i = cuda.grid(1)
    n, d = src.shape
    if i < n * d:
        r = i // d
        dst[r, offset + i - r * d] = src[r, i - r * d]


@cuda.jit
def _take_cols(src, dst, offset):
    """dst[n, j] = src[n, offset + j]."""
    i = cuda.grid(1)
    n, d = dst.shape
    if i < n * d:
        r = i // d
        dst[r, i - r * d] = src[r, offset + i - r * d]


@cuda.jit
def _add_into(dst, src):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] += src[i]


KERNELS = [
    (_copy_cols, "void(float32[:, ::1], float32[:, ::1], int64)"),
    (_take_cols, "void(float32[:, ::1], float32[:, ::1], int64)"),
    (_add_into, "void(float32[::1], float32[::1])"),
]


def _widths(layer):
    """Per input: its width in the joined [N, width...] layout (channels or flat features)."""
    if layer.join == "flat":
        return [int(np.prod(s)) for s in layer.input_shapes]
    return [s[0] * int(np.prod(s[1:])) for s in layer.input_shapes]


def join_inputs(impl, xs, stream):
    """Device twin of layers.base.join_inputs: one input is passed as is, several are copied
    side by side (along channels, or flattened) into a reused buffer."""
    layer = impl.layer
    n = xs[0].shape[0]
    if layer.join == "separate":
        return [x.reshape((n,) + tuple(s)) for x, s in zip(xs, layer.input_shapes)]
    if len(xs) == 1:
        x = xs[0]
        return x.reshape((n,) + tuple(layer.input_shape)) if x.shape[1:] != tuple(layer.input_shape) else x
    out = impl.buffer("joined", (n,) + tuple(layer.input_shape))
    flat = out.reshape(n, -1)
    offset = 0
    for x, width in zip(xs, _widths(layer)):
        src = x.reshape(n, width)
        _copy_cols[blocks_for(n * width), BLOCK, stream](src, flat, offset)
        offset += width
    return out


def split_grad(impl, dx, stream):
    """Device twin of layers.base.split_grad: one contiguous array per input."""
    layer = impl.layer
    if layer.join == "separate":
        return [g.reshape((g.shape[0],) + tuple(s)) for g, s in zip(dx, layer.input_shapes)]
    n = dx.shape[0]
    if len(layer.input_shapes) == 1:
        return [dx.reshape((n,) + tuple(layer.input_shapes[0]))]
    flat = dx.reshape(n, -1)
    parts, offset = [], 0
    for i, (shape, width) in enumerate(zip(layer.input_shapes, _widths(layer))):
        part = impl.buffer(f"dx_part{i}", (n, width))
        _take_cols[blocks_for(n * width), BLOCK, stream](flat, part, offset)
        parts.append(part.reshape((n,) + tuple(shape)))
        offset += width
    return parts


def add_into(dst, src, stream):
    """dst += src (same shape, contiguous)."""
    d, s = dst.reshape(-1), src.reshape(-1)
    _add_into[blocks_for(d.size), BLOCK, stream](d, s)
