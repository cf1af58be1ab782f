"""Winograd F(2x2, 3x3) and F(2x2, 5x5) transforms as LLVM IR, 8 tiles at a time (Lavin &
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

The 2x2 outputs of an r x r cross-correlation g over an n x n input tile d (n = r + 1) are
A^T [(G g G^T) . (B^T d B)] A, and the weight gradient of those outputs' gradient e is G^T
[(A e A^T) . (B^T d B)] G (. elementwise). Summed over channels, the n^2 elementwise products
become n^2 GEMMs with r^2 / (n^2 / 4) fewer multiply-adds than the convolution's (2.25x for
3x3, 2.78x for 5x5); these kernels are the transforms on each side. SCHEMES holds B^T, G and
A^T by tile side n: for 3x3 the points 0, 1, -1 and infinity; for 5x5 0, 1, -1, 1/2, -1/2 and
infinity (float32's error on 64 channels, median of 30 tiles: 1.7e-6 of the largest output,
3.6e-6 with +-2 for +-1/2, 2.5e-6 with B^T's rows scaled to integers).

Tiles lie side by side along a row of tiles, a lane each: the input's columns 2t .. 2t+n-1
of tile t are read as n unit-stride streams (the callers keep padded planes de-interleaved,
even columns then odd, so column 2t + j is a fixed offset + t). Scalar Numba loops over the
n^2 streams did not vectorise; these are 8 lanes wide by construction, and the tile side is
their tuples' length (a kernel compiles once for each). Raw pointers, no bounds checks: a
call reads ceil(count / 8) * 8 lanes of each stream (the callers keep slack past their
buffers) and stores only its `count` (a last vector lane by lane).
"""
import functools

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from layers.fma_tiles import LANES, _I32, _VEC, _const, _fmuladd, _operands, _vload

SCHEMES = {
    4: {"BT": ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        "G": ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),
        "AT": ((1, 1, 1, 0), (0, 1, -1, -1))},
    6: {"BT": ((.25, 0, -1.25, 0, 1, 0), (0, -.25, -.25, 1, 1, 0), (0, .25, -.25, -1, 1, 0),
               (0, -.5, -1, .5, 1, 0), (0, .5, -1, -.5, 1, 0), (0, .25, 0, -1.25, 0, 1)),
        "G": ((4, 0, 0, 0, 0), (2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3), (2 / 3, -2 / 3, 2 / 3, -2 / 3, 2 / 3),
              (-8 / 3, -4 / 3, -2 / 3, -1 / 3, -1 / 6), (-8 / 3, 4 / 3, -2 / 3, 1 / 3, -1 / 6), (0, 0, 0, 0, 1)),
        "AT": ((1, 1, 1, 1, 1, 0), (0, 1, -1, .5, -.5, 1))},
}
# A, the output gradient's transform: A^T's columns
for _s in SCHEMES.values():
    _s["A"] = tuple(zip(*_s["AT"]))

# (a0..a7, b0..b7) -> a0 b0 a1 b1 ..: a tile's two output columns side by side
_INTERLEAVE = ir.Constant(ir.VectorType(_I32, 2 * LANES), [i // 2 + (i % 2) * LANES for i in range(2 * LANES)])


def _vectors(builder, count):
    """ceil(count / LANES): the vectors that cover count lanes."""
    return builder.sdiv(builder.add(count, _const(LANES - 1)), _const(LANES))


def _store_part(builder, value, base, index, left):
    """value (a vector of 8 or 16 floats) at base[index], only its first `left` lanes where
    left < its lanes (8 at a time, then lane by lane): the tiles past a row's end are
    another row's, maybe another thread's."""
    if value.type.count > LANES:
        for h in range(value.type.count // LANES):
            half = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(_I32, LANES),
                                                                    list(range(h * LANES, (h + 1) * LANES))))
            _store_part(builder, half, base, builder.add(index, _const(h * LANES)),
                        builder.sub(left, _const(h * LANES)))
        return
    full = builder.icmp_signed(">=", left, _const(LANES))
    with builder.if_else(full) as (whole, part):
        with whole:
            builder.store(value, builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)
        with part:
            for lane in range(LANES - 1):
                with builder.if_then(builder.icmp_signed(">", left, _const(lane))):
                    builder.store(builder.extract_element(value, ir.Constant(_I32, lane)),
                                  builder.gep(base, [builder.add(index, _const(lane))]))


def _combine(builder, row, vecs):
    """sum_j row[j] vecs[j] for a row of 0 and +-1: adds and subtracts (a +1 term first)."""
    terms = sorted(((c, v) for c, v in zip(row, vecs) if c), key=lambda term: term[0] != 1)
    assert all(abs(c) == 1 for c, _ in terms)
    acc = terms[0][1] if terms[0][0] > 0 else builder.fsub(ir.Constant(_VEC, None), terms[0][1])
    for c, v in terms[1:]:
        acc = builder.fadd(acc, v) if c > 0 else builder.fsub(acc, v)
    return acc


def _apply(matrix, builder, vecs):
    """matrix (rows of constants) times the column of vectors vecs."""
    return [_combine(builder, row, vecs) for row in matrix]


def _splat(value):
    return ir.Constant(_VEC, [float(value)] * LANES)


def _bt6(builder, d):
    """F(2x2, 5x5)'s B^T on six vectors with its shared terms once and fused multiply-adds:
    13 operations where its rows one by one take 26 (LLVM may not reassociate floats). Rows
    1-4 are (d4 - d2/4) +- (d3 - d1/4) and (d4 - d2) +- (d3 - d1)/2."""
    fma = _fmuladd(builder)
    p = builder.call(fma, [d[2], _splat(-.25), d[4]])
    q = builder.call(fma, [d[1], _splat(-.25), d[3]])
    u = builder.fsub(d[4], d[2])
    v = builder.fmul(builder.fsub(d[3], d[1]), _splat(.5))
    return [builder.call(fma, [d[0], _splat(.25), builder.call(fma, [d[2], _splat(-1.25), d[4]])]),
            builder.fadd(p, q), builder.fsub(p, q), builder.fadd(u, v), builder.fsub(u, v),
            builder.call(fma, [d[1], _splat(.25), builder.call(fma, [d[3], _splat(-1.25), d[5]])])]


def _at6(builder, m):
    """F(2x2, 5x5)'s A^T on six vectors: m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + m5 +
    (m3 - m4)/2."""
    fma = _fmuladd(builder)
    y0 = builder.fadd(builder.fadd(m[0], builder.fadd(m[1], m[2])), builder.fadd(m[3], m[4]))
    y1 = builder.call(fma, [builder.fsub(m[3], m[4]), _splat(.5), builder.fadd(builder.fsub(m[1], m[2]), m[5])])
    return [y0, y1]


def _a6(builder, e):
    """F(2x2, 5x5)'s A on two vectors: e0, e0 + e1, e0 - e1, e0 + e1/2, e0 - e1/2, e1."""
    fma = _fmuladd(builder)
    return [e[0], builder.fadd(e[0], e[1]), builder.fsub(e[0], e[1]), builder.call(fma, [e[1], _splat(.5), e[0]]),
            builder.call(fma, [e[1], _splat(-.5), e[0]]), e[1]]


# how each transform is emitted: F(2x2, 3x3)'s matrices term by term (their +-1 entries: adds
# and subtracts alone); F(2x2, 5x5)'s by hand (its layer tests hold them to the float64
# convolution)
EMIT = {(4, name): functools.partial(_apply, SCHEMES[4][name]) for name in ("BT", "AT", "A")}
EMIT.update({(6, "BT"): _bt6, (6, "AT"): _at6, (6, "A"): _a6})


def _transform_in(which):
    """An intrinsic (src, r0, rstride, cols, dst, d0, dstride, count, room, taps) that, for
    tiles t < count, reads the k x k values src[r0 + i*rstride + cols[j] + t] (k = len(cols))
    and stores the n^2 values M v M^T (M: SCHEMES[n][which], n = len(taps)), value n*a + b
    at dst[d0 + (n*a + b)*dstride + t]: whole vectors of 8 tiles (the last one's lanes past
    count land on the next row's, written after), but no lane at or past `room` (the
    stream's end)."""

    @intrinsic
    def transform(typingctx, src, r0, rstride, cols, dst, d0, dstride, count, room, taps):
        n, k = len(taps), len(cols)
        emit = EMIT[n, which]
        assert len(SCHEMES[n][which][0]) == k
        sig = types.void(src, r0, rstride, cols, dst, d0, dstride, count, room, taps)

        def codegen(context, builder, signature, args):
            sd, r0, rs, cs, dd, d0, ds, count, room, _ = _operands(context, builder, signature, args)
            with cgutils.for_range(builder, _vectors(builder, count)) as v:
                at = builder.mul(v.index, _const(LANES))
                across = []
                for i in range(k):
                    base = builder.add(builder.add(r0, builder.mul(_const(i), rs)), at)
                    across.append(emit(builder, [_vload(builder, sd, builder.add(base, cs[j])) for j in range(k)]))
                for b in range(n):          # the column transform of each transformed column b
                    down = emit(builder, [across[i][b] for i in range(k)])
                    for a in range(n):
                        to = builder.add(builder.add(d0, builder.mul(_const(n * a + b), ds)), at)
                        _store_part(builder, down[a], dd, to, builder.sub(room, at))
            return context.get_dummy_value()

        return sig, codegen

    return transform


wino_input = _transform_in("BT")       # B^T d B of the n x n input tiles
wino_input.__doc__ = "B^T d B for `count` tiles: n rows from r0 and n cols locate d[i][j] of tile 0."
wino_grad = _transform_in("A")         # A e A^T of the 2x2 output-gradient tiles
wino_grad.__doc__ = "A e A^T for `count` tiles: 2 rows from r0 and 2 cols locate e[i][j] of tile 0."


@intrinsic
def wino_output(typingctx, m, m0, mstride, out, o0, ostride, count, width, nrows, taps):
    """For tiles t < count: the 2x2 outputs A^T M A of the n^2 values m[m0 + p*mstride + t]
    (p = n*a + b, n = len(taps)), row i's two at out[o0 + i*ostride + 2t], out[.. + 2t + 1]
    (16 floats a vector of tiles), of each row the first `width`, of the rows the first nrows
    (1 or 2)."""
    n = len(taps)
    emit = EMIT[n, "AT"]
    sig = types.void(m, m0, mstride, out, o0, ostride, count, width, nrows, taps)

    def codegen(context, builder, signature, args):
        md, m0, ms, od, o0, os_, count, width, nrows, _ = _operands(context, builder, signature, args)
        with cgutils.for_range(builder, _vectors(builder, count)) as v:
            at = builder.mul(v.index, _const(LANES))
            vals = [_vload(builder, md, builder.add(builder.add(m0, builder.mul(_const(p), ms)), at))
                    for p in range(n * n)]
            down = [emit(builder, [vals[n * a + b] for a in range(n)]) for b in range(n)]   # [b][i]
            left = builder.sub(width, builder.mul(at, _const(2)))
            for i in range(2):
                y = emit(builder, [down[b][i] for b in range(n)])
                pair = builder.shuffle_vector(y[0], y[1], _INTERLEAVE)
                to = builder.add(builder.add(o0, builder.mul(_const(i), os_)), builder.mul(at, _const(2)))
                if i == 0:
                    _store_part(builder, pair, od, to, left)
                else:
                    with builder.if_then(builder.icmp_signed(">", nrows, _const(1))):
                        _store_part(builder, pair, od, to, left)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def split_pairs(typingctx, src, s0, dst, d_first, d_second, vectors):
    """For i < 8 * vectors: dst[d_first + i] = src[s0 + 2i], dst[d_second + i] = src[s0 + 2i
    + 1]: a row's even and odd columns apart (16 floats read at a time)."""
    sig = types.void(src, s0, dst, d_first, d_second, vectors)
    wide = ir.VectorType(ir.FloatType(), 2 * LANES)

    def codegen(context, builder, signature, args):
        sd, s0, dd, d1, d2, vectors = _operands(context, builder, signature, args)
        with cgutils.for_range(builder, vectors) as v:
            at = builder.mul(v.index, _const(LANES))
            pair = builder.load(builder.bitcast(builder.gep(sd, [builder.add(s0, builder.mul(at, _const(2)))]),
                                                wide.as_pointer()), align=4)
            for which, to in ((0, d1), (1, d2)):
                part = builder.shuffle_vector(pair, pair, ir.Constant(ir.VectorType(_I32, LANES),
                                                                      list(range(which, 2 * LANES, 2))))
                builder.store(part, builder.bitcast(builder.gep(dd, [builder.add(to, at)]), _VEC.as_pointer()),
                              align=4)
        return context.get_dummy_value()

    return sig, codegen

