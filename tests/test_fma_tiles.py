"""The register tiles (layers/fma_tiles.py) against plain NumPy sums, at odd offsets."""
import numba
import numpy as np
import pytest

from layers.fma_tiles import (DOT_FILTERS, DOT_TAPS, LANES, SLACK, TILE4_FILTERS, TILE4_VECTORS, TILE_FILTERS,
                              TILE_VECTORS, dot_tiles, run_row_tiles, run_tiles, taps_tile, taps_tile4)


@numba.njit
def _taps(x, xb, off, w, wb, out, ob, ostride):
    taps_tile(x, xb, off, off.shape[0], w, wb, out, ob, ostride)


@numba.njit
def _taps4(x, xb, off, w, wb, out, ob, ostride):
    taps_tile4(x, xb, off, off.shape[0], w, wb, out, ob, ostride)


@numba.njit
def _run(x, xb, off, w, vec, out, ostride):
    run_tiles(x, xb, off, w, vec, out, ostride)


@numba.njit
def _run_rows(x, xb, off, w, r0, r1, tf, vec, out, ostride):
    run_row_tiles(x, xb, off, w, r0, r1, tf, vec, out, ostride)


@numba.njit
def _dot(dz, zb, x, xbase, off, t0, t1, images, dz_step, x_step, pos, out):
    dot_tiles(dz, zb, x, xbase, off, t0, t1, images, dz_step, x_step, pos, out)


@pytest.mark.parametrize("tile, filters, xb, ob", [(_taps, TILE_FILTERS, (5, 61), (0, 11)),
                                                   (_taps4, TILE4_FILTERS, (5, 61, 2), (0, 11, 25))])
def test_taps_tile_is_the_weighted_sum_of_shifted_runs(tile, filters, xb, ob):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(500 + SLACK).astype(np.float32)
    off = rng.integers(0, 400, size=37).astype(np.int64)           # any taps, any alignment
    w = rng.standard_normal(3 + 37 * filters).astype(np.float32)
    ostride, wb = 40, 3
    out = np.full(ostride * filters + 40, np.nan, np.float32)       # stores, never reads
    tile(x, xb, off, w, wb, out, ob, ostride)
    x64, w64 = x.astype(np.float64), w[wb:].astype(np.float64).reshape(37, filters)
    for f in range(filters):
        for v in range(len(xb)):
            want = sum(w64[t, f] * x64[xb[v] + off[t]:xb[v] + off[t] + LANES] for t in range(37))
            got = out[ob[v] + f * ostride:ob[v] + f * ostride + LANES]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    untouched = np.ones(out.shape, bool)
    for f in range(filters):
        for v in range(len(xb)):
            untouched[ob[v] + f * ostride:ob[v] + f * ostride + LANES] = False
    assert np.isnan(out[untouched]).all()


@pytest.mark.parametrize("filters, per", [(TILE_FILTERS, TILE_VECTORS), (TILE4_FILTERS, TILE4_VECTORS)])
def test_run_tiles_picks_the_tile_from_the_packed_weights(filters, per):
    """Weights packed taps x 4 run taps_tile4 over the runs three at a time, taps x 6
    taps_tile two at a time: every run's outputs, whichever shape."""
    rng = np.random.default_rng(2)
    taps, ostride = 9, 64
    x = rng.standard_normal(300 + SLACK).astype(np.float32)
    off = rng.integers(0, 200, size=taps).astype(np.int64)
    w = rng.standard_normal(taps * filters).astype(np.float32)
    vec = np.array([(3 + 8 * i, 8 * i) for i in range(2 * per)], np.int64)     # two tiles' runs
    out = np.full(ostride * filters, np.nan, np.float32)
    _run(x, 4, off, w, vec, out, ostride)
    x64, w64 = x.astype(np.float64), w.astype(np.float64).reshape(taps, filters)
    for f in range(filters):
        for start, at in vec:
            want = sum(w64[t, f] * x64[4 + start + off[t]:4 + start + off[t] + LANES] for t in range(taps))
            np.testing.assert_allclose(out[f * ostride + at:f * ostride + at + LANES], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile, filters, xb, ob", [(_taps, TILE_FILTERS, (5, 61), (0, 11)),
                                                   (_taps4, TILE4_FILTERS, (5, 61, 2), (0, 11, 25))])
def test_taps_tile_reads_each_filters_row_where_it_lies(tile, filters, xb, ob):
    """wb a tuple: filter f's taps at w[wb[f] + t] (the layer's own [F, taps] weights, rows
    in any order, one repeated), the same sums as packed weights give."""
    rng = np.random.default_rng(4)
    taps = 29
    x = rng.standard_normal(500 + SLACK).astype(np.float32)
    off = rng.integers(0, 400, size=taps).astype(np.int64)
    w = rng.standard_normal(9 * taps).astype(np.float32)
    rows = (7, 2, 2, 5, 0, 8)[:filters]
    ostride = 40
    out = np.full(ostride * filters + 40, np.nan, np.float32)
    tile(x, xb, off, w, tuple(r * taps for r in rows), out, ob, ostride)
    packed = np.ascontiguousarray(w.reshape(9, taps)[list(rows)].T).ravel()      # [taps, filters]
    want = np.full(out.shape, np.nan, np.float32)
    tile(x, xb, off, packed, 0, want, ob, ostride)
    np.testing.assert_array_equal(out, want)                  # the same products, the same order
    x64, w64 = x.astype(np.float64), w.astype(np.float64).reshape(9, taps)
    for f, r in enumerate(rows):
        for v in range(len(xb)):
            ref = sum(w64[r, t] * x64[xb[v] + off[t]:xb[v] + off[t] + LANES] for t in range(taps))
            np.testing.assert_allclose(out[ob[v] + f * ostride:ob[v] + f * ostride + LANES], ref, rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("tf, per", [(TILE_FILTERS, TILE_VECTORS), (TILE4_FILTERS, TILE4_VECTORS)])
@pytest.mark.parametrize("r0, r1", [(3, 9), (1, 3)])
def test_run_row_tiles_covers_the_rows_and_repeats_the_last(tf, per, r0, r1):
    """Filters r0 .. r1-1 of the [F, taps] weights, tf a tile: a block short of tf filters
    (r1 - r0 < tf) fills its spare rows with filter r1-1's sums; no weight past row r1-1 is
    read (the rows after it are NaN)."""
    rng = np.random.default_rng(5)
    taps, ostride = 11, 64
    x = rng.standard_normal(300 + SLACK).astype(np.float32)
    off = rng.integers(0, 200, size=taps).astype(np.int64)
    w = rng.standard_normal((12, taps)).astype(np.float32)
    w[r1:] = np.nan
    vec = np.array([(3 + 8 * i, 8 * i) for i in range(2 * per)], np.int64)
    out = np.full(ostride * tf, np.nan, np.float32)
    _run_rows(x, 4, off, w.ravel(), r0, r1, tf, vec, out, ostride)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for i in range(tf):
        f = min(r0 + i, r1 - 1)
        for start, at in vec:
            want = sum(w64[f, t] * x64[4 + start + off[t]:4 + start + off[t] + LANES] for t in range(taps))
            np.testing.assert_allclose(out[i * ostride + at:i * ostride + at + LANES], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t0, t1", [(2, 11), (0, 3), (5, 7)])
def test_dot_tiles_add_the_dot_products_over_images_and_runs(t0, t1):
    """Taps t0 .. t1-1, three a tile, the last tile's missing taps repeating tap t1 - 1."""
    rng = np.random.default_rng(1)
    images, dz_step, x_step, xbase = 3, 300, 260, 4
    dz = rng.standard_normal(images * dz_step + SLACK).astype(np.float32)
    x = rng.standard_normal(images * x_step + SLACK).astype(np.float32)
    zb = (1, 70, 70, 150)                               # a repeated filter, as a block's last
    off = rng.integers(0, 40, size=12).astype(np.int64)
    pos = np.array([(0, 3), (8, 8), (21, 45), (40, 30), (77, 77)], np.int64)    # (gradient, input) starts
    tiles = -(-(t1 - t0) // DOT_TAPS)
    size = DOT_FILTERS * DOT_TAPS * LANES
    out = rng.standard_normal(tiles * size + 8).astype(np.float32)
    before = out.astype(np.float64)
    _dot(dz, zb, x, xbase, off, t0, t1, images, dz_step, x_step, pos, out)
    for i in range(tiles):
        for f in range(DOT_FILTERS):
            for t in range(DOT_TAPS):
                tap = min(t0 + i * DOT_TAPS + t, t1 - 1)
                at = i * size + (f * DOT_TAPS + t) * LANES
                want = before[at:at + LANES].copy()
                for n in range(images):
                    for p, q in pos:
                        a = n * dz_step + zb[f] + p
                        b = n * x_step + xbase + off[tap] + q
                        want += dz[a:a + LANES].astype(np.float64) * x[b:b + LANES]
                np.testing.assert_allclose(out[at:at + LANES], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[tiles * size:], before[tiles * size:].astype(np.float32))   # past the tiles