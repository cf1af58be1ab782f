"""Register-tiled multiply-add micro-kernels for the direct convolutions, emitted as LLVM IR.

Numba's loops vectorise, but a blocked loop's partial sums go through memory (the 4x4-blocked
shift-and-add loop ran at half the core's peak on CIFAR-10's convolutions), and tiles written
as scalar Numba code did not stay in registers (5x slower). These intrinsics write the tile
itself as <8 x float> operations: the partial sums are SSA values that LLVM keeps in vector
registers across the whole reduction (12 of AVX2's 16), each input vector is loaded once and
feeds a row of multiply-adds, and nothing is packed or copied. `llvm.fmuladd` is one fused
multiply-add where the CPU has FMA and a multiply then an add where it has not; LLVM splits
the 8-float vectors on narrower targets (SSE, NEON), so the same code runs everywhere.

They read arrays through raw pointers, without bounds checks: callers keep every read inside
the arrays (the convolution's buffers carry SLACK floats past their last image).
"""
import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 8       # floats per vector
SLACK = 16      # floats past a buffer's end that a vector read starting inside it may touch
TILE_FILTERS, TILE_VECTORS = 6, 2     # taps_tile: 6 x 2 vectors = 12 partial-sum registers
TILE4_FILTERS, TILE4_VECTORS = 4, 3   # taps_tile4: 4 x 3
DOT_FILTERS, DOT_TAPS = 4, 3          # dot_tiles: 4 x 3 = 12

_F32, _I64, _I32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
_VEC = ir.VectorType(_F32, LANES)


def _operands(context, builder, signature, args):
    """The intrinsic's arguments as the IR uses them: an array's data pointer, a tuple's
    values as a list, a scalar as is."""
    out = []
    for aty, value in zip(signature.args, args):
        if isinstance(aty, types.Array):
            out.append(context.make_array(aty)(context, builder, value).data)
        elif isinstance(aty, types.BaseTuple):
            out.append([builder.extract_value(value, i) for i in range(len(aty))])
        else:
            out.append(value)
    return out


def _vload(builder, base, index):
    """The LANES floats at base[index] (any alignment)."""
    return builder.load(builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)


def _vstore(builder, value, base, index):
    builder.store(value, builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)


def _splat(builder, scalar, vec=_VEC):
    """A vector (<8 x float>, or `vec`) of LANES copies of scalar."""
    undef = ir.Constant(vec, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _fmuladd(builder):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                          "llvm.fmuladd.v8f32")


def _const(value):
    return ir.Constant(_I64, value)


def _accumulators(builder, rows, cols):
    """rows x cols zeroed vector slots (allocas that LLVM promotes to registers)."""
    return [[cgutils.alloca_once_value(builder, ir.Constant(_VEC, None)) for _ in range(cols)]
            for _ in range(rows)]


def _fma_into(builder, fma, slot, a, b):
    """slot += a * b."""
    builder.store(builder.call(fma, [a, b, builder.load(slot)]), slot)


def _taps_tile(filters):
    """taps_tile for `filters` filters; its runs are as many as the tuple xb holds."""

    @intrinsic
    def taps_tile(typingctx, x, xb, off, taps, w, wb, out, ob, ostride):
        """For f < filters and v < len(xb), the LANES outputs
        out[ob[v] + f*ostride + l] = sum over t < taps of W(f, t) * x[xb[v] + off[t] + l]
        (l < LANES): a convolution's outputs at runs of LANES positions for `filters` filters.
        W(f, t) = w[wb + t*filters + f] where wb is one offset (weights packed tap-major:
        pack_flipped), w[wb[f] + t] where wb is a tuple of `filters` (each filter's row of
        taps where it lies: the weights as the layer holds them). Stores, does not accumulate."""
        sig = types.void(x, xb, off, taps, w, wb, out, ob, ostride)
        rows = isinstance(wb, types.BaseTuple)
        runs = len(xb)

        def codegen(context, builder, signature, args):
            xd, xbs, od, taps, wd, wb, outd, obs, ostride = _operands(context, builder, signature, args)
            wbs = list(wb) if rows else [wb]
            fn = _tile_function(builder.module, filters, runs, rows, xd.type, od.type)
            builder.call(fn, [xd, *xbs, od, taps, wd, *wbs, outd, *obs, ostride])
            return context.get_dummy_value()

        return sig, codegen

    return taps_tile


def _tile_function(module, filters, runs, rows, fptr, iptr):
    """The tile as a function of its own (not inlined): inlined into a kernel, the loop's
    register allocation met the kernel's other live vectors, and with 12 sums, the runs'
    inputs and a weight filling AVX2's 16 registers, a sum went to the stack and back every
    tap (the kernel ran at half speed). Arguments: x, the runs' starts, off, taps, w, the
    weights' offset(s), out, the runs' output starts, ostride."""
    name = f"convnet_taps_tile_{filters}x{runs}_{'rows' if rows else 'packed'}"
    if name in module.globals:
        return module.globals[name]
    wcount = filters if rows else 1
    fnty = ir.FunctionType(ir.VoidType(), [fptr] + [_I64] * runs + [iptr, _I64, fptr] + [_I64] * wcount +
                           [fptr] + [_I64] * runs + [_I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    builder = ir.IRBuilder(fn.append_basic_block())
    args = list(fn.args)
    xd, xbs = args[0], args[1:1 + runs]
    od, taps, wd = args[1 + runs:4 + runs]
    wb = args[4 + runs:4 + runs + wcount]
    outd, obs, ostride = args[4 + runs + wcount], args[5 + runs + wcount:5 + 2 * runs + wcount], args[-1]
    fma = _fmuladd(builder)
    acc = _accumulators(builder, filters, runs)
    # each filter's weights from a pointer of its own, set before the loop
    bases = ([builder.gep(wd, [b]) for b in wb] if rows else
             [builder.gep(wd, [builder.add(wb[0], _const(f))]) for f in range(filters)])
    step = _const(1 if rows else filters)
    with cgutils.for_range(builder, taps) as loop:
        t = loop.index
        o = builder.load(builder.gep(od, [t]))
        xs = [_vload(builder, xd, builder.add(o, b)) for b in xbs]
        at = builder.mul(t, step)
        for f in range(filters):
            wf = _splat(builder, builder.load(builder.gep(bases[f], [at])))
            for v in range(runs):
                _fma_into(builder, fma, acc[f][v], wf, xs[v])
    for f in range(filters):
        for v in range(runs):
            at = builder.add(obs[v], builder.mul(ostride, _const(f)))
            _vstore(builder, builder.load(acc[f][v]), outd, at)
    builder.ret_void()
    return fn


# The two tile shapes, 12 partial-sum registers each: 6 filters x 2 runs, and 4 filters x 3
# runs for filter counts that 6 divides badly (16 and 32 filters fill 18 and 36 rows of 6)
taps_tile = _taps_tile(TILE_FILTERS)
taps_tile4 = _taps_tile(TILE4_FILTERS)


@intrinsic
def dot_tiles(typingctx, dz, zb, x, xbase, off, t0, t1, images, dz_step, x_step, pos, out):
    """For the taps t0 .. t1-1 three at a time (tile i: taps t0 + 3i + t, t < DOT_TAPS, the
    last of them repeating tap t1 - 1 where fewer remain), f < DOT_FILTERS and each lane
    l < LANES: out[((i*DOT_FILTERS + f)*DOT_TAPS + t)*LANES + l] += sum over n < images,
    (p, q) in pos of dz[n*dz_step + zb[f] + p + l] * x[n*x_step + xbase + off[tap] + q + l]:
    a convolution's weight gradient for 4 filters (their gradients at zb) and a run of taps
    (their shifted inputs at xbase + off) over runs of LANES output positions (pos [runs,
    2]: each run's start in the gradient's rows and in the input's), its lanes summed by
    the caller (a vector add per tile here, not 12 horizontal sums). The taps' loop runs
    here, not in Numba: a call per tile cost as much as its 16 runs on CIFAR-10's 8x8 maps."""
    sig = types.void(dz, zb, x, xbase, off, t0, t1, images, dz_step, x_step, pos, out)

    def codegen(context, builder, signature, args):
        zd, zbs, xd, xbase, offd, t0, t1, images, dz_step, x_step, pd, outd = _operands(
            context, builder, signature, args)
        count = builder.udiv(context.make_array(signature.args[10])(context, builder, args[10]).nitems, _const(2))
        tiles = builder.sdiv(builder.add(builder.sub(t1, t0), _const(DOT_TAPS - 1)), _const(DOT_TAPS))
        last = builder.sub(t1, _const(1))
        fma = _fmuladd(builder)
        acc = _accumulators(builder, DOT_FILTERS, DOT_TAPS)
        with cgutils.for_range(builder, tiles) as tile:
            first = builder.add(t0, builder.mul(tile.index, _const(DOT_TAPS)))
            xbs = []
            for t in range(DOT_TAPS):
                tap = builder.add(first, _const(t))
                tap = builder.select(builder.icmp_signed("<", tap, last), tap, last)
                xbs.append(builder.add(xbase, builder.load(builder.gep(offd, [tap]))))
            for row in acc:
                for slot in row:
                    builder.store(ir.Constant(_VEC, None), slot)
            with cgutils.for_range(builder, images) as image:
                zn = builder.mul(image.index, dz_step)
                xn = builder.mul(image.index, x_step)
                with cgutils.for_range(builder, count) as run:
                    at = builder.mul(run.index, _const(2))
                    zp = builder.add(zn, builder.load(builder.gep(pd, [at])))
                    xp = builder.add(xn, builder.load(builder.gep(pd, [builder.add(at, _const(1))])))
                    gs = [_vload(builder, zd, builder.add(zp, b)) for b in zbs]
                    xs = [_vload(builder, xd, builder.add(xp, b)) for b in xbs]
                    for f in range(DOT_FILTERS):
                        for t in range(DOT_TAPS):
                            _fma_into(builder, fma, acc[f][t], gs[f], xs[t])
            base = builder.mul(tile.index, _const(DOT_FILTERS * DOT_TAPS * LANES))
            for f in range(DOT_FILTERS):
                for t in range(DOT_TAPS):
                    at = builder.add(base, _const((f * DOT_TAPS + t) * LANES))
                    _vstore(builder, builder.fadd(_vload(builder, outd, at), builder.load(acc[f][t])), outd, at)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def run_tiles(x, xb, off, w, vec, out, ostride):
    """The tiles over every run of vec [runs, 2] (input start, output start), for the
    filters whose packed weights are w (taps x 6 or taps x 4 of them: taps_tile, two runs at
    a time, or taps_tile4, three; vec's runs a multiple of that); the input starts offset
    by xb."""
    taps = off.shape[0]
    if taps > 0 and w.shape[0] == taps * TILE4_FILTERS:
        for v in range(0, vec.shape[0], TILE4_VECTORS):
            taps_tile4(x, (xb + vec[v, 0], xb + vec[v + 1, 0], xb + vec[v + 2, 0]), off, taps, w, 0, out,
                       (vec[v, 1], vec[v + 1, 1], vec[v + 2, 1]), ostride)
        return
    for v in range(0, vec.shape[0], TILE_VECTORS):
        taps_tile(x, (xb + vec[v, 0], xb + vec[v + 1, 0]), off, taps, w, 0, out,
                  (vec[v, 1], vec[v + 1, 1]), ostride)


@numba.njit(inline="always")
def run_row_tiles(x, xb, off, w, r0, r1, tf, vec, out, ostride):
    """run_tiles for the filters r0 .. r1-1 of w as the layer holds it (flat, filter r's
    taps at r*taps: nothing packed), tf (6 or 4) at a time: a tile's rows past r1-1 read
    filter r1-1 again (their sums are not used); vec's runs a multiple of 2 or 3."""
    taps = off.shape[0]
    last = r1 - 1
    if tf == TILE4_FILTERS:
        wb4 = (r0 * taps, min(r0 + 1, last) * taps, min(r0 + 2, last) * taps, min(r0 + 3, last) * taps)
        for v in range(0, vec.shape[0], TILE4_VECTORS):
            taps_tile4(x, (xb + vec[v, 0], xb + vec[v + 1, 0], xb + vec[v + 2, 0]), off, taps, w, wb4, out,
                       (vec[v, 1], vec[v + 1, 1], vec[v + 2, 1]), ostride)
        return
    wb6 = (r0 * taps, min(r0 + 1, last) * taps, min(r0 + 2, last) * taps, min(r0 + 3, last) * taps,
           min(r0 + 4, last) * taps, min(r0 + 5, last) * taps)
    for v in range(0, vec.shape[0], TILE_VECTORS):
        taps_tile(x, (xb + vec[v, 0], xb + vec[v + 1, 0]), off, taps, w, wb6, out,
                  (vec[v, 1], vec[v + 1, 1]), ostride)
