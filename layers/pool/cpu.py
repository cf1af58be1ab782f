"""Numba CPU kernels for max / average pooling with a fused activation.

One parallel task per (image, channel) plane; inner loops run along the contiguous
width. Windows 3 or 2 wide at stride 2 (nearly every net's pools) run eight at a time in
vectors written in LLVM IR (max_run, sum_run, spread_run), masked where fewer remain or the
row's end cuts a window (CIFAR-10's 16- and 8-wide maps).
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

from layers.fma_tiles import LANES, _F32, _I32, _VEC, _const, _operands, _splat, _vload, _vstore     # its IR helpers
from layers.neuron.cpu import activate, activate_grad, activation_kernel, specialised, uses_input

ZERO = np.float32(0.0)
_IVEC = ir.VectorType(_I32, LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)
_LANE = ir.Constant(_IVEC, list(range(LANES)))
_EVENS = ir.Constant(_IVEC, list(range(0, 2 * LANES, 2)))
_ODDS = ir.Constant(_IVEC, list(range(1, 2 * LANES, 2)))


def _below(builder, count):
    """<LANES x i1>: lane < count (an i64; <= 0 none, >= LANES all)."""
    count = builder.select(builder.icmp_signed("<", count, _const(LANES)), count, _const(LANES))
    count = builder.trunc(builder.select(builder.icmp_signed(">", count, _const(0)), count, _const(0)), _I32)
    return builder.icmp_signed("<", _LANE, _splat(builder, count, _IVEC))


def _vload_first(builder, base, index, count, fill):
    """The LANES floats at base[index], or where count is not None only the first `count`
    of them, the others `fill` (a masked load: they are never read)."""
    if count is None:
        return _vload(builder, base, index)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC.as_pointer(), _I32, _MASK, _VEC]), "llvm.masked.load.v8f32.p0v8f32")
    ptr = builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer())
    return builder.call(fn, [ptr, ir.Constant(_I32, 4), _below(builder, count),
                             ir.Constant(_VEC, [fill] * LANES)])


def _vstore_first(builder, value, base, index, count):
    """_vstore, of the first `count` lanes only where count is not None."""
    vty = value.type
    if count is None:
        builder.store(value, builder.bitcast(builder.gep(base, [index]), vty.as_pointer()), align=4)
        return
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, _MASK]),
        f"llvm.masked.store.v{LANES}{'f32' if vty.element == _F32 else 'i32'}.p0v{LANES}"
        f"{'f32' if vty.element == _F32 else 'i32'}")
    ptr = builder.bitcast(builder.gep(base, [index]), vty.as_pointer())
    builder.call(fn, [value, ptr, ir.Constant(_I32, 4), _below(builder, count)])


def _row_cells(builder, xd, at, size, cells, fill):
    """Cells 2l, 2l+1 (and 2l+2 for size 3) of a row from x[at], l < LANES, as vectors: the
    windows of `size` at stride 2 that start there, each row's cells deinterleaved by two
    shuffles. Where `cells` is not None, only the row's first `cells` are read, the others
    `fill` (windows cut by the row's end)."""
    part = (lambda skip: None) if cells is None else (lambda skip: builder.sub(cells, _const(skip)))
    lo = _vload_first(builder, xd, at, part(0), fill)
    hi = _vload_first(builder, xd, builder.add(at, _const(LANES)), part(LANES), fill)
    out = [builder.shuffle_vector(lo, hi, _EVENS), builder.shuffle_vector(lo, hi, _ODDS)]
    if size == 3:               # cells 2l + 2: the odd lanes of the pair from at + 1
        one = builder.add(at, _const(1))
        out.append(builder.shuffle_vector(_vload_first(builder, xd, one, part(1), fill),
                                          _vload_first(builder, xd, builder.add(one, _const(LANES)),
                                                       part(LANES + 1), fill), _ODDS))
    return out


def _max_run(size, masked):
    """max_run for windows `size` (2 or 3) wide at stride 2; `masked`: the first `count`."""

    @intrinsic
    def max_run(typingctx, x, start, rows, width, count, cells, base, y, yo, arg, ao):
        """LANES outputs of a max pool (with `masked`, the first `count` of them), windows
        `size` wide at stride 2 and `rows` (>= 1) high: window l's top-left cell is x[start +
        2*l] (flat), its rows `width` apart; y[yo + l] = its maximum and arg[ao + l] = base +
        that cell's offset from start, the first maximum in row-major order (a strict '>',
        as _fold_row3). With `masked`, a row's cells from `cells` on lie past its end: never
        read, never the maximum (windows cut by the edge). Unmasked, it reads the windows'
        cells and writes LANES outputs."""
        sig = types.void(x, start, rows, width, count, cells, base, y, yo, arg, ao)

        def codegen(context, builder, signature, args):
            xd, start, rows, width, count, cells, base, yd, yo, ad, ao = _operands(context, builder, signature,
                                                                                   args)
            count, cells = (count, cells) if masked else (None, None)

            def fold_row(at, first):
                """(best, where) of each window's row at flat x index `at`, `first` its index."""
                cells_ = _row_cells(builder, xd, at, size, cells, float("-inf"))
                i0 = builder.add(_splat(builder, first, _IVEC), _EVENS)      # cells 2l
                best, where = cells_[0], i0
                for t, e in enumerate(cells_[1:], 1):
                    more = builder.fcmp_ordered(">", e, best)
                    best = builder.select(more, e, best)
                    where = builder.select(more, builder.add(i0, ir.Constant(_IVEC, [t] * LANES)), where)
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
            _vstore_first(builder, builder.load(best), yd, yo, count)
            _vstore_first(builder, builder.load(where), ad, ao, count)
            return context.get_dummy_value()

        return sig, codegen

    return max_run


def _sum_run(size, masked):
    """sum_run for windows `size` (2 or 3) wide at stride 2; `masked`: the first `count`."""

    @intrinsic
    def sum_run(typingctx, x, start, rows, width, count, cells, whole, div, edge, y, yo):
        """y[yo + l] = the sum of window l's cells times `div` (1 / its divisor) for l < whole,
        `edge` after (windows cut by the row's end), l < LANES (with `masked`, l < count):
        windows `size` wide at stride 2 and `rows` (>= 1) high, window l's top-left cell
        x[start + 2*l] (flat), its rows `width` apart. With `masked`, a row's cells from
        `cells` on lie past its end: never read, counted as zeros. A multiply, not a
        divide: Numba's fastmath flags reach this IR too, and a vector divide then became a
        reciprocal estimate (-2 / 4 = -0.49999997)."""
        sig = types.void(x, start, rows, width, count, cells, whole, div, edge, y, yo)

        def codegen(context, builder, signature, args):
            xd, start, rows, width, count, cells, whole, div, edge, yd, yo = _operands(
                context, builder, signature, args)
            count, cells = (count, cells) if masked else (None, None)

            def row_sum(at):
                parts = _row_cells(builder, xd, at, size, cells, 0.0)
                total = builder.fadd(parts[0], parts[1])
                return builder.fadd(total, parts[2]) if size == 3 else total

            acc = cgutils.alloca_once_value(builder, row_sum(start))
            with cgutils.for_range(builder, builder.sub(rows, _const(1))) as loop:
                at = builder.add(start, builder.mul(builder.add(loop.index, _const(1)), width))
                builder.store(builder.fadd(builder.load(acc), row_sum(at)), acc)
            scale = builder.select(_below(builder, whole), _splat(builder, div), _splat(builder, edge))
            _vstore_first(builder, builder.fmul(builder.load(acc), scale), yd, yo, count)
            return context.get_dummy_value()

        return sig, codegen

    return sum_run


_SHIFT = ir.Constant(_IVEC, [LANES] + list(range(LANES - 1)))        # lane l <- lane l-1, lane 0 <- 0
_ZIP_LO = ir.Constant(_IVEC, [v for l in range(LANES // 2) for v in (l, l + LANES)])
_ZIP_HI = ir.Constant(_IVEC, [v for l in range(LANES // 2, LANES) for v in (l, l + LANES)])


def _spread_run(size, masked):
    """spread_run for windows `size` (2 or 3) wide at stride 2; `masked`: the first `count`."""

    @intrinsic
    def spread_run(typingctx, g, go, dx, start, rows, width, count, cells):
        """Adds g[go + l] to each cell of window l, l < LANES (with `masked`, l < count):
        windows `size` wide at stride 2 and `rows` (>= 1) high, window l's top-left cell
        dx[start + 2*l] (flat), its rows `width` apart: an average pool's gradient. A cell
        two windows share (size 3) gets both in one vector add, the even cells' g[l] +
        g[l-1], the window before the run's own by the caller (runs go left to right). With
        `masked`, a row's cells from `cells` on lie past its end: never read or written."""
        sig = types.void(g, go, dx, start, rows, width, count, cells)

        def codegen(context, builder, signature, args):
            gd, go, dd, start, rows, width, count, cells = _operands(context, builder, signature, args)
            gv = _vload_first(builder, gd, go, count if masked else None, 0.0)
            even = gv
            if size == 3:
                even = builder.fadd(gv, builder.shuffle_vector(gv, ir.Constant(_VEC, None), _SHIFT))
            lo = builder.shuffle_vector(even, gv, _ZIP_LO)                 # cells 0 .. 7
            hi = builder.shuffle_vector(even, gv, _ZIP_HI)                 # cells 8 .. 15
            # window LANES-1's third cell, 2*LANES: past the two vectors (size 3, all LANES)
            tail = size == 3 and not masked
            if size == 3 and masked:
                tail = builder.and_(builder.icmp_signed(">=", count, _const(LANES)),
                                    builder.icmp_signed(">", cells, _const(2 * LANES)))
            last = builder.extract_element(gv, ir.Constant(_I32, LANES - 1))
            limit = cells if masked else None
            with cgutils.for_range(builder, rows) as loop:
                at = builder.add(start, builder.mul(loop.index, width))
                for k, part in enumerate((lo, hi)):
                    where = builder.add(at, _const(k * LANES))
                    n = None if limit is None else builder.sub(limit, _const(k * LANES))
                    if n is None:
                        _vstore(builder, builder.fadd(_vload(builder, dd, where), part), dd, where)
                    else:               # (a row of 8 or fewer cells has no second half)
                        with builder.if_then(builder.icmp_signed(">", n, _const(0))):
                            old = _vload_first(builder, dd, where, n, 0.0)
                            _vstore_first(builder, builder.fadd(old, part), dd, where, n)
                if tail is not False:
                    def add_tail():
                        ptr = builder.gep(dd, [builder.add(at, _const(2 * LANES))])
                        builder.store(builder.fadd(builder.load(ptr), last), ptr)
                    if tail is True:
                        add_tail()
                    else:
                        with builder.if_then(tail):
                            add_tail()
            return context.get_dummy_value()

        return sig, codegen

    return spread_run


# 8 windows at a time, 3 or 2 wide at stride 2 (AlexNet's, CIFAR-10's, ResNet's, LeNet's and
# VGG's pools), each row's cells deinterleaved by two shuffles into even and odd columns; the
# masked ones for rows of fewer than 8 such windows (CIFAR-10's 16- and 8-wide maps)
max_run3, max_run2 = _max_run(3, False), _max_run(2, False)
max_part3, max_part2 = _max_run(3, True), _max_run(2, True)
sum_run3, sum_run2 = _sum_run(3, False), _sum_run(2, False)
sum_part3, sum_part2 = _sum_run(3, True), _sum_run(2, True)
spread_run3, spread_run2 = _spread_run(3, False), _spread_run(2, False)
spread_part3, spread_part2 = _spread_run(3, True), _spread_run(2, True)


@numba.njit(inline="always")
def _runs_apply(size, stride):
    """Whether a row's whole windows take the vector runs (max_run, sum_run)."""
    return stride == 2 and (size == 3 or size == 2)


@numba.njit(inline="always")
def _max_runs(x, start, rows, width, whole, count, cells, base, y, yo, arg, size):
    """max_run over `count` windows side by side from x[start], the first `whole` of them
    whole across, the others cut by the row's end (`cells` of it from start): LANES whole
    ones at a time, the rest masked (max_part)."""
    o = 0
    while o + LANES <= whole:
        if size == 3:
            max_run3(x, start + 2 * o, rows, width, LANES, 0, base + 2 * o, y, yo + o, arg, yo + o)
        else:
            max_run2(x, start + 2 * o, rows, width, LANES, 0, base + 2 * o, y, yo + o, arg, yo + o)
        o += LANES
    while o < count:
        m = min(LANES, count - o)
        if size == 3:
            max_part3(x, start + 2 * o, rows, width, m, cells - 2 * o, base + 2 * o, y, yo + o, arg, yo + o)
        else:
            max_part2(x, start + 2 * o, rows, width, m, cells - 2 * o, base + 2 * o, y, yo + o, arg, yo + o)
        o += m


@numba.njit(inline="always")
def _sum_runs(x, start, rows, width, whole, count, cells, div, edge, y, yo, size):
    """sum_run over `count` windows side by side from x[start], as _max_runs: the whole ones
    times div, those cut by the row's end times edge."""
    o = 0
    while o + LANES <= whole:
        if size == 3:
            sum_run3(x, start + 2 * o, rows, width, LANES, 0, LANES, div, edge, y, yo + o)
        else:
            sum_run2(x, start + 2 * o, rows, width, LANES, 0, LANES, div, edge, y, yo + o)
        o += LANES
    while o < count:
        m = min(LANES, count - o)
        if size == 3:
            sum_part3(x, start + 2 * o, rows, width, m, cells - 2 * o, whole - o, div, edge, y, yo + o)
        else:
            sum_part2(x, start + 2 * o, rows, width, m, cells - 2 * o, whole - o, div, edge, y, yo + o)
        o += m


@numba.njit(inline="always")
def _spread_runs(g, go, dx, start, rows, width, whole, count, cells, size):
    """spread_run over `count` windows side by side from dx[start], as _max_runs."""
    o = 0
    while o + LANES <= whole:
        if size == 3:
            spread_run3(g, go + o, dx, start + 2 * o, rows, width, LANES, 0)
        else:
            spread_run2(g, go + o, dx, start + 2 * o, rows, width, LANES, 0)
        o += LANES
    while o < count:
        m = min(LANES, count - o)
        if size == 3:
            spread_part3(g, go + o, dx, start + 2 * o, rows, width, m, cells - 2 * o)
        else:
            spread_part2(g, go + o, dx, start + 2 * o, rows, width, m, cells - 2 * o)
        o += m


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
    slower than these: loads behind selects became branches). Masked runs (max_part) take
    rows of fewer than 8 windows and the window the right edge cuts, and the scalar loop
    visits only the windows the runs leave: a loop over every window skipping those cost
    as much as the runs (CIFAR-10's pool1 at batch 64, one core: 1.62 -> 0.81 ms)."""
    x, size, stride, pad, pa, pb, y, arg, pre, p = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    i, j = p // c, p % c
    xp = x[i, j]
    lo, hi = _whole(size, stride, pad, w, ow)
    # windows lo .. ow-1 (whole, then cut by the right edge) in vector runs; the others
    # (cut by the left padding) one by one below
    v0, v1 = (lo, ow) if _runs_apply(size, stride) else (0, 0)
    for oy in range(oh):
        y0, y1 = _span(oy, size, stride, pad, h)
        at = (p * oh + oy) * ow
        x0 = v0 * stride - pad
        _max_runs(x, (p * h + y0) * w + x0, y1 - y0, w, hi - v0, v1 - v0, w - x0, y0 * w + x0, y, at + v0, arg,
                  size)
        out = y[i, j, oy][v0:v1]                # slices from 0 vectorise (threads.chunk_slice)
        if uses_input(code):
            before = pre[i, j, oy][v0:v1]
            for k in range(out.size):
                before[k] = out[k]
        for k in range(out.size):
            out[k] = activate(code, pa, pb, out[k])
        for k in range(ow - (v1 - v0)):        # the windows outside v0 .. v1-1 (a loop over all
            ox = k if k < v0 else k + v1 - v0  # that skipped these cost ~30% of CIFAR-10's pool1)
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
def _window_sums(row, out, n, size, stride, first):
    """out[k] (=, or += unless `first`) the sum of row[k*stride .. k*stride + size-1], k < n:
    a row of the windows whole across, row and out sliced at the first of them. Offsets
    counted from 0 (stride 2 a constant): Numba's negative-index wrap then drops out of the
    loop (the layers.threads.chunk_slice pattern)."""
    if size == 3 and stride == 2:
        for k in range(n):
            s = row[2 * k] + row[2 * k + 1] + row[2 * k + 2]
            out[k] = s if first else out[k] + s
    else:
        for k in range(n):
            x0 = k * stride
            s = row[x0]
            for t in range(1, size):
                s += row[x0 + t]
            out[k] = s if first else out[k] + s


@numba.njit(inline="always")
def _avg_plane(code, args):
    """One plane, an output row at a time: its windows from the first whole one to the row's
    end summed and divided LANES at a time in vectors (sum_run: stride 2, 3 or 2 wide), or
    the whole ones a window row at a time into y's row (_window_sums); the others cell by
    cell; then activated along the row. Summing each window's cells one by one ran at ~7 ns
    an output (CIFAR-10's 3x3 stride-2 pools on 16x16 and 8x8 maps, one core)."""
    x, size, stride, pad, adaptive, pa, pb, y, pre, p = args
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    i, j = p // c, p % c
    xp, yp = x[i, j], y[i, j]
    lo, hi = (0, 0) if adaptive else _whole(size, stride, pad, w, ow)
    runs = _runs_apply(size, stride) and not adaptive
    done = ow if runs else hi                       # windows lo .. done-1 summed together
    x_lo = lo * stride - pad
    edge = _window(ow - 1, size, stride, pad, adaptive, w, ow)[2] if runs else 1   # the last window's width
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        out = yp[oy]
        whole = np.float32(ny * size)               # the divisor of a window whole across
        if runs:
            _sum_runs(x, (p * h + y0) * w + x_lo, y1 - y0, w, hi - lo, ow - lo, w - x_lo, np.float32(1) / whole,
                      np.float32(1) / np.float32(ny * edge), y, (p * oh + oy) * ow + lo, size)
        else:
            _window_sums(xp[y0][x_lo:], out[lo:], hi - lo, size, stride, True)
            for yy in range(y0 + 1, y1):
                _window_sums(xp[yy][x_lo:], out[lo:], hi - lo, size, stride, False)
            inner = out[lo:hi]
            for k in range(inner.size):
                inner[k] = np.divide(inner[k], whole)
        for k in range(ow - (done - lo)):           # the others: cell by cell
            ox = k if k < lo else k + done - lo
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            s = ZERO
            if x1 - x0 == w:                        # whole rows (a global pool's): one flat run
                cells = xp.reshape(-1)[y0 * w:y1 * w]
                for t in range(cells.size):
                    s += cells[t]
            else:
                for yy in range(y0, y1):
                    cells = xp[yy][x0:x1]             # from 0: vectorises
                    for t in range(cells.size):
                        s += cells[t]
            out[ox] = np.divide(s, np.float32(ny * nx))
        if uses_input(code):
            before = pre[i, j, oy]
            for k in range(ow):
                before[k] = out[k]
        for k in range(ow):
            out[k] = activate(code, pa, pb, out[k])


@activation_kernel(split="forward")
def avg_forward(x, size, stride, pad, adaptive, code, pa, pb, y, pre):
    """y = f(sum over each window / its divisor (_window))."""
    for p in numba.prange(x.shape[0] * x.shape[1]):
        specialised(code, _avg_plane, (x, size, stride, pad, adaptive, pa, pb, y, pre, p))


@numba.njit(inline="always")
def _avg_divisors(size, stride, pad, adaptive, h, w, oh, ow, divs):
    """divs[oy*ow + ox] = window (oy, ox)'s divisor (_window), the same for every plane."""
    for oy in range(oh):
        ny = _window(oy, size, stride, pad, adaptive, h, oh)[2]
        for ox in range(ow):
            divs[oy * ow + ox] = np.float32(ny * _window(ox, size, stride, pad, adaptive, w, ow)[2])


@numba.njit(inline="always")
def _avg_grad_plane(code, args):
    """One plane: each window's share of its gradient, f'(g) / its divisor, into `shares`
    (the plane at once); then, an output row at a time, added to the window's cells LANES
    windows at a time in vectors (spread_run: stride 2, 3 or 2 wide; the windows from the
    first whole one to the row's end), the others cell by cell. ~7 -> ~1.5-3 ns an output
    (CIFAR-10's pools)."""
    g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p, divs, shares = args
    c, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    h, w = dx.shape[2], dx.shape[3]
    i, j = p // c, p % c
    gp, yp, dxp = g[i, j].reshape(-1), y[i, j].reshape(-1), dx[i, j]
    for k in range(oh * ow):
        shares[k] = np.divide(activate_grad(code, pa, pb, gp[k], yp[k], pre[i, j].reshape(-1)[k]
                                            if uses_input(code) else ZERO), divs[k])
    lo, hi = (0, 0) if adaptive else _whole(size, stride, pad, w, ow)
    runs = _runs_apply(size, stride) and not adaptive
    done = ow if runs else lo                       # windows lo .. done-1 spread in runs
    x_lo = lo * stride - pad
    flat = dxp.reshape(-1)
    for k in range(h * w):
        flat[k] = ZERO
    for oy in range(oh):
        y0, y1, ny = _window(oy, size, stride, pad, adaptive, h, oh)
        if runs:
            _spread_runs(shares, oy * ow + lo, dx, (p * h + y0) * w + x_lo, y1 - y0, w, hi - lo, ow - lo, w - x_lo,
                         size)
        for k in range(ow - (done - lo)):           # the others: cell by cell
            ox = k if k < lo else k + done - lo
            x0, x1, nx = _window(ox, size, stride, pad, adaptive, w, ow)
            gg = shares[oy * ow + ox]
            if x1 - x0 == w:
                cells = dxp.reshape(-1)[y0 * w:y1 * w]
                for t in range(cells.size):
                    cells[t] += gg
            else:
                for yy in range(y0, y1):
                    cells = dxp[yy][x0:x1]
                    for t in range(cells.size):
                        cells[t] += gg


AVG_PLANES = 16         # planes per task of avg_backward, which share its scratch


@activation_kernel(split="backward", grad="g")
def avg_backward(g, y, pre, size, stride, pad, adaptive, code, pa, pb, dx):
    """dx = sum over the windows containing each input of f'(g) / window divisor."""
    planes, oh, ow = g.shape[0] * g.shape[1], g.shape[2], g.shape[3]
    for task in numba.prange((planes + AVG_PLANES - 1) // AVG_PLANES):
        divs, shares = np.empty(oh * ow, np.float32), np.empty(oh * ow, np.float32)
        _avg_divisors(size, stride, pad, adaptive, dx.shape[2], dx.shape[3], oh, ow, divs)
        for p in range(task * AVG_PLANES, min(planes, (task + 1) * AVG_PLANES)):
            specialised(code, _avg_grad_plane, (g, y, pre, size, stride, pad, adaptive, pa, pb, dx, p, divs, shares))
