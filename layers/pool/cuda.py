"""CUDA kernels for max / average pooling with a fused activation (the twin of cpu.py).

Same rules as the CPU (layers/pool/__init__.py): windows start at o*stride - padding and are
clipped at the edges, or are adaptive bins; avg divides by the cells inside the padded
input (count_include_pad) or the bin's count, max records the plane-local
row-major index of the FIRST maximum (int32) and its gradient goes there only; the
activation (code, pa, pb: layers/neuron/spec.py) is applied after pooling (abs and square
keep the pooled value for their gradient).

Forward: one thread per output element. Backward: one thread per INPUT element, gathering
from the windows that contain it (no atomics). It visits those windows in the same
(oy, ox) row-major order as the CPU's scatter, so the sums are added in the same order.
Arrays are passed flat (C-contiguous NCHW), with planes = N*C.
"""
import numpy as np
from numba import cuda, float32

from layers.cudabase import BLOCK, CudaLayer, blocks_for
from layers.neuron.cuda import activate, activate_grad, uses_input


@cuda.jit(device=True, inline="always")
def _window(o, size, stride, pad, adaptive, side, outs):
    """[lo, hi) of window o along one axis, and its average divisor (cpu._window's twin)."""
    if adaptive:
        lo = o * side // outs
        hi = ((o + 1) * side + outs - 1) // outs
        return lo, hi, hi - lo
    start = o * stride - pad
    return max(start, 0), min(start + size, side), min(start + size, side + pad) - start


@cuda.jit(device=True, inline="always")
def _out_window(i, h, w, oh, ow, size, stride, pad, adaptive):
    """Output element i of flat [planes, oh, ow] -> (plane, rows y0:y1, columns x0:x1 of its
    window, clipped at the edges, and the average's divisor)."""
    ox = i % ow
    t = i // ow
    oy = t % oh
    y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
    x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
    return t // oh, y0, y1, x0, x1, ny * nx


@cuda.jit
def max_forward(x, y, arg, pre, planes, h, w, oh, ow, size, stride, pad, adaptive, code, pa, pb):
    i = cuda.grid(1)
    if i < planes * oh * ow:
        p, y0, y1, x0, x1, _ = _out_window(i, h, w, oh, ow, size, stride, pad, adaptive)
        base = p * h * w
        where = y0 * w + x0
        best = x[base + where]
        for yy in range(y0, y1):
            for xx in range(x0, x1):
                v = x[base + yy * w + xx]
                if v > best:          # strict: ties keep the earliest element
                    best = v
                    where = yy * w + xx
        arg[i] = where
        if uses_input(code):
            pre[i] = best
        y[i] = activate(code, pa, pb, best)


@cuda.jit
def avg_forward(x, y, pre, planes, h, w, oh, ow, size, stride, pad, adaptive, code, pa, pb):
    i = cuda.grid(1)
    if i < planes * oh * ow:
        p, y0, y1, x0, x1, count = _out_window(i, h, w, oh, ow, size, stride, pad, adaptive)
        base = p * h * w
        s = float32(0.0)
        for yy in range(y0, y1):
            for xx in range(x0, x1):
                s += x[base + yy * w + xx]
        v = s / float32(count)
        if uses_input(code):
            pre[i] = v
        y[i] = activate(code, pa, pb, v)


@cuda.jit(device=True, inline="always")
def _holding(pos, size, stride, pad, adaptive, side, outs):
    """The inclusive range of windows along one axis that hold input cell pos."""
    if adaptive:      # floor(o*side/outs) <= pos < ceil((o+1)*side/outs)
        return pos * outs // side, min(((pos + 1) * outs + side - 1) // side - 1, outs - 1)
    q = pos + pad     # in padded coordinates, window o holds o*stride .. o*stride + size - 1
    lo = q - size + stride
    return (lo // stride if lo > 0 else 0), min(q // stride, outs - 1)


@cuda.jit(device=True, inline="always")
def _covering(i, h, w, oh, ow, size, stride, pad, adaptive):
    """Input element i of flat [planes, h, w] -> (plane, iy, ix, and the inclusive ranges
    oy0..oy1, ox0..ox1 of the output windows that hold it)."""
    ix = i % w
    t = i // w
    iy = t % h
    oy0, oy1 = _holding(iy, size, stride, pad, adaptive, h, oh)
    ox0, ox1 = _holding(ix, size, stride, pad, adaptive, w, ow)
    return t // h, iy, ix, oy0, oy1, ox0, ox1


@cuda.jit
def max_backward(g, y, pre, arg, dx, planes, h, w, oh, ow, size, stride, pad, adaptive, code, pa, pb):
    """dx[p, iy, ix] = sum of f'(g) over the windows whose recorded maximum is (iy, ix)."""
    i = cuda.grid(1)
    if i < planes * h * w:
        p, iy, ix, oy0, oy1, ox0, ox1 = _covering(i, h, w, oh, ow, size, stride, pad, adaptive)
        here = iy * w + ix
        base = p * oh * ow
        s = float32(0.0)
        for oy in range(oy0, oy1 + 1):
            for ox in range(ox0, ox1 + 1):
                o = base + oy * ow + ox
                if arg[o] == here:
                    a = pre[o] if uses_input(code) else float32(0.0)
                    s += activate_grad(code, pa, pb, g[o], y[o], a)
        dx[i] = s


@cuda.jit
def avg_backward(g, y, pre, dx, planes, h, w, oh, ow, size, stride, pad, adaptive, code, pa, pb):
    """dx[p, iy, ix] = sum over the windows holding (iy, ix) of f'(g) / window divisor."""
    i = cuda.grid(1)
    if i < planes * h * w:
        p, iy, ix, oy0, oy1, ox0, ox1 = _covering(i, h, w, oh, ow, size, stride, pad, adaptive)
        base = p * oh * ow
        s = float32(0.0)
        for oy in range(oy0, oy1 + 1):
            rows = _window(oy, size, stride, pad, adaptive, h, oh)[2]
            for ox in range(ox0, ox1 + 1):
                cols = _window(ox, size, stride, pad, adaptive, w, ow)[2]
                o = base + oy * ow + ox
                a = pre[o] if uses_input(code) else float32(0.0)
                s += activate_grad(code, pa, pb, g[o], y[o], a) / float32(rows * cols)
        dx[i] = s


_F = "float32[::1]"
_DIMS = "int64, " * 10 + "float32, float32"   # sizes, then code, pa, pb
KERNELS = [
    (max_forward, f"void({_F}, {_F}, int32[::1], {_F}, {_DIMS})"),
    (avg_forward, f"void({_F}, {_F}, {_F}, {_DIMS})"),
    (max_backward, f"void({_F}, {_F}, {_F}, int32[::1], {_F}, {_DIMS})"),
    (avg_backward, f"void({_F}, {_F}, {_F}, {_F}, {_DIMS})"),
]


class PoolCuda(CudaLayer):
    def __init__(self, layer):
        super().__init__(layer)
        self.act = tuple(layer.act.kernel_args())
        self.geometry = tuple(int(v) for v in layer.kernel_geometry())   # size, stride, pad, adaptive
        self.oh, self.ow = (int(v) for v in layer.out_hw)
        self._y = self._pre = self._arg = None

    def forward(self, x, params, train, seed, stream):
        n, c, h, w = x.shape
        oh, ow = self.oh, self.ow
        y = self.buffer("y", (n, c, oh, ow))
        yf = y.reshape(-1)
        # pre (the pooled value before the activation) is kept only for abs and square;
        # otherwise the kernels never touch it, and y stands in for it
        pre = self.buffer("pre", y.shape).reshape(-1) if self.layer.act.needs_input else yf
        dims = (n * c, h, w, oh, ow) + self.geometry + self.act
        grid = blocks_for(yf.size)
        if self.layer.mode == "max":
            arg = self.buffer("arg", y.shape, np.int32).reshape(-1)
            max_forward[grid, BLOCK, stream](x.reshape(-1), yf, arg, pre, *dims)
            self._arg = arg
        else:
            avg_forward[grid, BLOCK, stream](x.reshape(-1), yf, pre, *dims)
        self._y, self._pre, self._in = y, pre, (n, c, h, w)
        return y

    def backward(self, dy, params, need_dx, stream):
        if not need_dx:
            return None, {}
        n, c, h, w = self._in
        dx = self.buffer("dx", (n, c, h, w))
        dxf = dx.reshape(-1)
        dims = (n * c, h, w, self.oh, self.ow) + self.geometry + self.act
        g, yf = dy.reshape(-1), self._y.reshape(-1)
        grid = blocks_for(dxf.size)
        if self.layer.mode == "max":
            max_backward[grid, BLOCK, stream](g, yf, self._pre, self._arg, dxf, *dims)
        else:
            avg_backward[grid, BLOCK, stream](g, yf, self._pre, dxf, *dims)
        return dx, {}


def make(layer):
    return PoolCuda(layer)
