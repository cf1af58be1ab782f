"""Numba CPU kernels for max / average pooling with a fused activation.

One parallel task per (image, channel) plane; inner loops run along the contiguous
width (max pooling's whole windows at stride 2 eight at a time: max_run, in LLVM IR).
The max kernels record, per output, the plane-local row-major index of the winning input
(int32), so backward is a scatter that never rereads the input. The activation is (code,
pa, pb) as layers/neuron/spec.py defines it; each plane's loop runs through `specialised`,
so relu and the identity get branch-free loops of their own.
Window geometry (`padding`, adaptive bins, the divisor rule): layers/pool/__init__.py.
"""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from layers.fma_tiles import LANES, _I32, _const, _operands, _splat, _vload, _vstore     # its IR helpers
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised, uses_input

ZERO = np.float32(0.0)
_IVEC = ir.VectorType(_I32, LANES)
_EVENS = ir.Constant(_IVEC, list(range(0, 2 * LANES, 2)))
_ODDS = ir.Constant(_IVEC, list(range(1, 2 * LANES, 2)))


def _max_run(size):
    """max_run for windows `size` (2 or 3) wide at stride 2."""

    @intrinsic
    def max_run(typingctx, x, start, rows, width, base, y, yo, arg, ao):
        """LANES outputs of a max pool, windows `size` wide at stride 2 and `rows` (>= 1)
        high: window l's top-left cell is x[start + 2*l] (flat), its rows `width` apart;
        y[yo + l] = its maximum and arg[ao + l] = base + that cell's offset from start, the
        first maximum in row-major order (a strict '>', as _fold_row3). Reads x[start ..
        start + 2*LANES - 2 + size - 1] of each row only: the windows' own cells."""
        sig = types.void(x, start, rows, width, base, y, yo, arg, ao)

        def codegen(context, builder, signature, args):
            xd, start, rows, width, base, yd, yo, ad, ao = _operands(context, builder, signature, args)

            def fold_row(at, first):
                """(best, where) of each window's row at flat x index `at`, `first` its index."""
                lo, hi = _vload(builder, xd, at), _vload(builder, xd, builder.add(at, _const(LANES)))
                e0 = builder.shuffle_vector(lo, hi, _EVENS)
                e1 = builder.shuffle_vector(lo, hi, _ODDS)
                i0 = builder.add(_splat(builder, first, _IVEC), _EVENS)      # cells 2l
                more = builder.fcmp_ordered(">", e1, e0)
                best = builder.select(more, e1, e0)
                where = builder.select(more, builder.add(i0, ir.Constant(_IVEC, [1] * LANES)), i0)
                if size == 3:           # cells 2l + 2: the odd lanes of the pair from at + 1
                    e2 = builder.shuffle_vector(_vload(builder, xd, builder.add(at, _const(1))),
                                                _vload(builder, xd, builder.add(at, _const(LANES + 1))), _ODDS)
                    more = builder.fcmp_ordered(">", e2, best)
                    best = builder.select(more, e2, best)
                    where = builder.select(more, builder.add(i0, ir.Constant(_IVEC, [2] * LANES)), where)
                return best, where

            base32 = builder.trunc(base, _I32)
            width32 = builder.trunc(width, _I32)
            best0, where0 = fold_row(start, base32)
            best = cgutils.alloca_once_value(builder, best0)
            where = cgutils.alloca_once_value(builder, where0)
            with cgutils.for_range(builder, builder.sub(rows, _const(1))) as loop:
                r = builder.add(loop.index, _const(1))
                rb, rx = fold_row(builder.add(start, builder.mul(r, width)),
                                  builder.add(base32, builder.mul(builder.trunc(r, _I32), width32)))
                old = builder.load(best)
                more = builder.fcmp_ordered(">", rb, old)
                builder.store(builder.select(more, rb, old), best)
                builder.store(builder.select(more, rx, builder.load(where)), where)
            _vstore(builder, builder.load(best), yd, yo)
            builder.store(builder.load(where),
                          builder.bitcast(builder.gep(ad, [ao]), _IVEC.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return max_run


# 8 windows at a time: 3 or 2 wide at stride 2 (AlexNet's, CIFAR-10's, ResNet's, LeNet's and
# VGG's pools), each row's cells deinterleaved by two shuffles into even and odd columns
max_run3 = _max_run(3)
max_run2 = _max_run(2)


@numba.njit(inline="always")
def _span(o, size, stride, pad, side):
    """[lo, hi): the input rows (or columns) of window o, clipped at the edges."""
    lo = o * stride - pad
    return max(lo, 0), min(lo + size, side)


@numba.njit(inline="always")
def _window(o, size, stride, pad, adaptive, side, outs):
    """[lo, hi) of average window o, and its divisor: the cells inside the padded input
    (count_include_pad), or for adaptive bins [floor(o*side/outs), ceil((o+1)*side/outs))."""
    if adaptive:
        lo = o * side // outs
        hi = ((o + 1) * side + outs - 1) // outs
        return lo, hi, hi - lo
    start = o * stride - pad
    return max(start, 0), min(start + size, side), min(start + size, side + pad) - start


@numba.njit(inline="always")
def _whole(size, stride, pad, w, ow):
    """[lo, hi): the output columns whose window lies whole inside the row (none cut at an
    edge): the kernels' straight-line 3-wide cases."""
    lo = min((pad + stride - 1) // stride, ow)
    return lo, max(min((w + pad - size) // stride + 1, ow), lo)


@numba.njit(inline="always")
def _fold_row3(row, x0, best, where, base):
    """Fold row cells x0, x0+1, x0+2 into (best, where): the row's first maximum first, then
    a strict '>' against the rows before, which is the row-major first maximum."""
    a, b, c = row[x0], row[x0 + 1], row[x0 + 2]
    mb = b > a
    rb = b if mb else a
    rx = x0 + 1 if mb else x0
    mc = c > rb
    rb = c if mc else rb
    rx = x0 + 2 if mc else rx
    more = rb > best
    return (rb if more else best), (base + rx if more else where)


@numba.njit(inline="always")
def _fold_row2(row, x0, best, where, base):
    """_fold_row3 for windows 2 wide (LeNet's and VGG's pools)."""
    a, b = row[x0], row[x0 + 1]
    mb = b > a
    rb = b if mb else a
    rx = x0 + 1 if mb else x0
    more = rb > best
    return (rb if more else best), (base + rx if more else where)


@numba.njit(inline="always")
def _max_plane(code, args):
    """One plane. Each window is scanned in row-major order keeping the first maximum (a
    strict '>'), its flat index h*W + w with it, as the reference's argmax. Written as
    selects, not an `if`: on real data that branch goes either way, and mispredicted it made
    the kernel ~3x slower (a stride-2 3x3 pool over a batch of 128 CIFAR-10 maps of 32
    planes, on one core: 46 -> 16 ms). Windows 3 or 2 wide and whole across (nearly all of
    them in AlexNet's, CIFAR-10's, ResNet's, LeNet's and VGG's pools) fold each row's cells
    in straight-line code, the rows' selects independent of each other: ~1.6-1.9x faster
    than the loop (same pool: 18.6 -> 9.8 ms; AlexNet's pool1 89 -> 48 ms; LeNet-5's pool1
    1.56 -> 0.94 ms). Rows of 8 or more such windows at stride 2 run 8 at a time in vector
    compares and selects (max_run), another 1.5-3x (one core: AlexNet's pool1 at batch 32
    10.2 -> 3.2 ms, CIFAR-10's at 128 9.4 -> 3.9, ResNet-18's at batch 1 1.8 -> 0.6, VGG-16's
    2x2 at batch 4 21.8 -> 10.9); the others stay scalar (three vectorised Numba loops were
    slower than these: loads behind selects became branches)."""
    x, size, stride, pad, pa, pb, y, arg, pre, p = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    i, j = p // c, p % c
    xp = x[i, j]
    lo, hi = _whole(size, stride, pad, w, ow)
    # the whole windows of a row LANES at a time (max_run), the last run overlapping the
    # one before it where LANES does not divide them; the others one by one below
    v0, v1 = (lo, hi) if stride == 2 and (size == 3 or size == 2) and hi - lo >= LANES else (0, 0)
    for oy in range(oh):
        y0, y1 = _span(oy, size, stride, pad, h)
        at = (p * oh + oy) * ow
        o = v0
        while o < v1:
            o = min(o, v1 - LANES)
            x0 = o * stride - pad
            if size == 3:
                max_run3(x, (p * h + y0) * w + x0, y1 - y0, w, y0 * w + x0, y, at + o, arg, at + o)
            else:
                max_run2(x, (p * h + y0) * w + x0, y1 - y0, w, y0 * w + x0, y, at + o, arg, at + o)
            o += LANES
        for ox in range(v0, v1):
            best = y[i, j, oy, ox]
            if uses_input(code):
                pre[i, j, oy, ox] = best
            y[i, j, oy, ox] = activate(code, pa, pb, best)
        for ox in range(ow):
            if v0 <= ox < v1:
                continue
            x0, x1 = _span(ox, size, stride, pad, w)
            if size == 3 and lo <= ox < hi:
                row = xp[y0]
                best, where = _fold_row3(row, x0, row[x0], y0 * w + x0, y0 * w)
                for yy in range(y0 + 1, y1):
                    best, where = _fold_row3(xp[yy], x0, best, where, yy * w)
            elif size == 2 and lo <= ox < hi:
                row = xp[y0]
                best, where = _fold_row2(row, x0, row[x0], y0 * w + x0, y0 * w)
                for yy in range(y0 + 1, y1):
                    best, where = _fold_row2(xp[yy], x0, best, where, yy * w)
            else:
                best, where = xp[y0, x0], y0 * w + x0
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        v = xp[yy, xx]
                        more = v > best
                        best = v if more else best
                        where = yy * w + xx if more else where
            arg[i, j, oy, ox] = where
            if uses_input(code):
                pre[i, j, oy, ox] = best
            y[i, j, oy, ox] = activate(code, pa, pb, best)


@activation_kernel(split="forward")
def max_forward(x, size, stride, pad, code, pa, pb, y, arg, pre):
    """y = f(max over each window's in-bounds cells); arg = index h*W + w of the first
    maximum (row-major); pre = the pooled value before the activation, written only where
    uses_input(code)."""
    for p in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _max_plane, (x, size, stride, pad, pa, pb, y, arg, pre, p))


@numba.njit(inline="always")
def _max_grad_plane(code, args):
    g, y, pre, arg, pa, pb, dx, p = args
    c, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    i, j = p // c, p % c
    for k in range(dx.shape[2]):
        dx[i, j, k] = ZERO
    for oy in range(oh):
        for ox in range(ow):
            gg = activate_grad(code, pa, pb, g[i, j, oy, ox], y[i, j, oy, ox],
                               pre[i, j, oy, ox] if uses_input(code) else ZERO)
            dx[i, j, arg[i, j, oy, ox]] += gg


@activation_kernel(split="backward", grad="g")
def max_backward(g, y, pre, arg, code, pa, pb, dx):
    """dx (flat planes [N, C, H*W]) = scatter of f'(g) to the recorded maxima.

    Only the first maximal element of a window receives its gradient, as in PyTorch and
    Caffe; cuda-convnet's kLocalMaxUndo instead gives it to every element equal to the max."""
    for p in numba.prange(g.shape[0] * g.shape[1]):
        specialised(code, _max_grad_plane, (g, y, pre, arg, pa, pb, dx, p))


@numba.njit(inline="always")
def _avg_plane(code, args):
    x, size, stride, pad, adaptive, pa, pb, y, pre, p = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    i, j = p // c, p % c
    lo, hi = _whole(size, stride, pad, w, ow)
    three = size == 3 and not adaptive
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        for ox in range(ow):
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            s = ZERO
            if three and lo <= ox < hi:      # rows summed apart: no loop, a shorter add chain
                for yy in range(y0, y1):
                    row = x[i, j, yy]
                    s += row[x0] + row[x0 + 1] + row[x0 + 2]
            else:
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        s += x[i, j, yy, xx]
            v = np.divide(s, np.float32(ny * nx))
            if uses_input(code):
                pre[i, j, oy, ox] = v
            y[i, j, oy, ox] = activate(code, pa, pb, v)


@activation_kernel(split="forward")
def avg_forward(x, size, stride, pad, adaptive, code, pa, pb, y, pre):
    """y = f(sum over each window / its divisor (_window))."""
    for p in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _avg_plane, (x, size, stride, pad, adaptive, pa, pb, y, pre, p))


@numba.njit(inline="always")
def _avg_grad_plane(code, args):
    g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p = args
    c, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    h, w = dx.shape[2], dx.shape[3]
    i, j = p // c, p % c
    lo, hi = _whole(size, stride, pad, w, ow)
    three = size == 3 and not adaptive
    for yy in range(h):
        for xx in range(w):
            dx[i, j, yy, xx] = ZERO
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        for ox in range(ow):
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            gg = activate_grad(code, pa, pb, g[i, j, oy, ox], y[i, j, oy, ox],
                               pre[i, j, oy, ox] if uses_input(code) else ZERO)
            gg = np.divide(gg, np.float32(ny * nx))
            if three and lo <= ox < hi:
                for yy in range(y0, y1):
                    row = dx[i, j, yy]
                    row[x0] += gg
                    row[x0 + 1] += gg
                    row[x0 + 2] += gg
            else:
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        dx[i, j, yy, xx] += gg


@activation_kernel(split="backward", grad="g")
def avg_backward(g, y, pre, size, stride, pad, adaptive, code, pa, pb, dx):
    """dx = sum over the windows containing each input of f'(g) / window divisor."""
    for p in numba.prange(g.shape[0] * g.shape[1]):
        specialised(code, _avg_grad_plane, (g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p))
