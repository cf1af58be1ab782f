"""Winograd F(2x2, 3x3) transforms as LLVM IR, 8 tiles at a time (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016).

With B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], G = [[1, 0, 0],
[1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] and A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], the
2x2 outputs of a 3x3 cross-correlation g over a 4x4 input tile d are A^T [(G g G^T) . (B^T d
B)] A, and the weight gradient of those outputs' gradient e is G^T [(A e A^T) . (B^T d B)] G
(. elementwise). Summed over channels, the 16 elementwise products become 16 GEMMs with 2.25x
fewer multiply-adds than the convolution's; these kernels are the transforms on each side.

Tiles lie side by side along a row of tiles, a lane each: the input's columns 2t .. 2t+3 of
tile t are read as four unit-stride streams (the callers keep padded planes de-interleaved,
even columns then odd, so column 2t + j is a fixed offset + t). Scalar Numba loops over the
16 streams did not vectorise; these are 8 lanes wide by construction. Raw pointers, no bounds
checks: a call reads ceil(count / 8) * 8 lanes of each stream (the callers keep slack past
their buffers) and stores only its `count` (a last vector lane by lane).
"""
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from layers.fma_tiles import LANES, _I32, _VEC, _const, _operands, _vload

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


def _bt(builder, d):
    """B^T applied to four vectors (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return [builder.fsub(d[0], d[2]), builder.fadd(d[1], d[2]), builder.fsub(d[2], d[1]), builder.fsub(d[1], d[3])]


def _a(builder, e):
    """A applied to two vectors: (e0, e0 + e1, e0 - e1, -e1)."""
    zero = ir.Constant(_VEC, None)
    return [e[0], builder.fadd(e[0], e[1]), builder.fsub(e[0], e[1]), builder.fsub(zero, e[1])]


def _at(builder, m):
    """A^T applied to four vectors: (m0 + m1 + m2, m1 - m2 - m3)."""
    return [builder.fadd(builder.fadd(m[0], m[1]), m[2]), builder.fsub(builder.fsub(m[1], m[2]), m[3])]


def _transform_in(rows, cols, side, inner):
    """An intrinsic (src, rows, cols, dst, d0, dstride, count, room) that, for tiles t <
    count, reads src[rows[i] + cols[j] + t] (i, j < side) and stores the 16 transformed
    values inner(.) over columns then rows, value 4a + b at dst[d0 + (4a + b)*dstride + t]:
    whole vectors of 8 tiles (the last one's lanes past count land on the next row's,
    written after), but no lane at or past `room` (the stream's end)."""

    @intrinsic
    def transform(typingctx, src, rows, cols, dst, d0, dstride, count, room):
        sig = types.void(src, rows, cols, dst, d0, dstride, count, room)

        def codegen(context, builder, signature, args):
            sd, rs, cs, dd, d0, ds, count, room = _operands(context, builder, signature, args)
            with cgutils.for_range(builder, _vectors(builder, count)) as v:
                at = builder.mul(v.index, _const(LANES))
                across = []
                for i in range(side):
                    base = builder.add(rs[i], at)
                    across.append(inner(builder, [_vload(builder, sd, builder.add(base, cs[j])) for j in range(side)]))
                for b in range(4):          # the column transform of each transformed column b
                    down = inner(builder, [across[i][b] for i in range(side)])
                    for a in range(4):
                        to = builder.add(builder.add(d0, builder.mul(_const(4 * a + b), ds)), at)
                        _store_part(builder, down[a], dd, to, builder.sub(room, at))
            return context.get_dummy_value()

        return sig, codegen

    return transform


wino_input = _transform_in(4, 4, 4, _bt)       # B^T d B of the 4x4 input tiles
wino_input.__doc__ = "B^T d B for `count` tiles: rows/cols (4 each) locate d[i][j] of tile 0."
wino_grad = _transform_in(2, 2, 2, _a)         # A e A^T of the 2x2 output-gradient tiles
wino_grad.__doc__ = "A e A^T for `count` tiles: rows/cols (2 each) locate e[i][j] of tile 0."


@intrinsic
def wino_output(typingctx, m, m0, mstride, out, o0, ostride, count, width, nrows):
    """For tiles t < count: the 2x2 outputs A^T M A of the 16 values m[m0 + p*mstride + t]
    (p = 4a + b), row i's two at out[o0 + i*ostride + 2t], out[.. + 2t + 1] (16 floats a
    vector of tiles), of each row the first `width`, of the rows the first nrows (1 or 2)."""
    sig = types.void(m, m0, mstride, out, o0, ostride, count, width, nrows)

    def codegen(context, builder, signature, args):
        md, m0, ms, od, o0, os_, count, width, nrows = _operands(context, builder, signature, args)
        with cgutils.for_range(builder, _vectors(builder, count)) as v:
            at = builder.mul(v.index, _const(LANES))
            vals = [_vload(builder, md, builder.add(builder.add(m0, builder.mul(_const(p), ms)), at))
                    for p in range(16)]
            down = [_at(builder, [vals[4 * a + b] for a in range(4)]) for b in range(4)]   # [b][i]
            left = builder.sub(width, builder.mul(at, _const(2)))
            for i in range(2):
                y = _at(builder, [down[b][i] for b in range(4)])
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

