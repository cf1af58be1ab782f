"""The register tiles (layers/fma_tiles.py) against plain NumPy sums, at odd offsets."""
import numba
import numpy as np

from layers.fma_tiles import DOT_FILTERS, DOT_TAPS, LANES, SLACK, TILE_FILTERS, TILE_VECTORS, dot_tile, taps_tile


@numba.njit
def _taps(x, xb, off, w, wb, out, ob, ostride):
    taps_tile(x, xb, off, off.shape[0], w, wb, out, ob, ostride)


@numba.njit
def _dot(dz, zb, x, xb, images, dz_step, x_step, pos, out):
    dot_tile(dz, zb, x, xb, images, dz_step, x_step, pos, out)


def test_taps_tile_is_the_weighted_sum_of_shifted_runs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(500 + SLACK).astype(np.float32)
    off = rng.integers(0, 400, size=37).astype(np.int64)           # any taps, any alignment
    w = rng.standard_normal(3 + 37 * TILE_FILTERS).astype(np.float32)
    xb, ob, ostride, wb = (5, 61), (0, 11), 40, 3
    out = np.full(ostride * TILE_FILTERS + 16, np.nan, np.float32)  # stores, never reads
    _taps(x, xb, off, w, wb, out, ob, ostride)
    x64, w64 = x.astype(np.float64), w[wb:].astype(np.float64).reshape(37, TILE_FILTERS)
    for f in range(TILE_FILTERS):
        for v in range(TILE_VECTORS):
            want = sum(w64[t, f] * x64[xb[v] + off[t]:xb[v] + off[t] + LANES] for t in range(37))
            got = out[ob[v] + f * ostride:ob[v] + f * ostride + LANES]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    untouched = np.ones(out.shape, bool)
    for f in range(TILE_FILTERS):
        for v in range(TILE_VECTORS):
            untouched[ob[v] + f * ostride:ob[v] + f * ostride + LANES] = False
    assert np.isnan(out[untouched]).all()


def test_dot_tile_adds_the_dot_products_over_images_and_runs():
    rng = np.random.default_rng(1)
    images, dz_step, x_step = 3, 300, 260
    dz = rng.standard_normal(images * dz_step + SLACK).astype(np.float32)
    x = rng.standard_normal(images * x_step + SLACK).astype(np.float32)
    zb, xb = (1, 70, 70, 150), (0, 9, 33)              # a repeated filter, as a block's last
    pos = np.array([(0, 3), (8, 8), (21, 45), (40, 30), (77, 77)], np.int64)    # (gradient, input) starts
    out = rng.standard_normal(DOT_FILTERS * DOT_TAPS * LANES).astype(np.float32)
    before = out.astype(np.float64)
    _dot(dz, zb, x, xb, images, dz_step, x_step, pos, out)
    for f in range(DOT_FILTERS):
        for t in range(DOT_TAPS):
            want = before[(f * DOT_TAPS + t) * LANES:(f * DOT_TAPS + t + 1) * LANES].copy()
            for n in range(images):
                for p, q in pos:
                    a = n * dz_step + zb[f] + p
                    b = n * x_step + xb[t] + q
                    want += dz[a:a + LANES].astype(np.float64) * x[b:b + LANES]
            np.testing.assert_allclose(out[(f * DOT_TAPS + t) * LANES:(f * DOT_TAPS + t + 1) * LANES], want,
                                       rtol=1e-5, atol=1e-5)
