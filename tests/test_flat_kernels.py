"""The flat element-wise kernels' chunks (layers.threads.chunks / chunk_slice) cover every
element once, however the size falls against CHUNK, serial and parallel: each kernel against
NumPy at sizes around the chunk boundaries."""
import numba
import numpy as np
import pytest

from layers import threads
from layers.elementwise_cpu import scale
from layers.eltmax import cpu as eltmax_cpu
from layers.eltsum import cpu as eltsum_cpu
from layers.neuron import cpu as neuron_cpu
from layers.neuron.spec import IDENT, RELU, TANH
from layers.threads import CHUNK

SIZES = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


@numba.njit
def _covered(n):
    seen = np.zeros(n, np.int64)
    for c in range(threads.chunks(n)):
        part = seen[threads.chunk_slice(c, n)]
        for i in range(part.size):
            part[i] += 1
    return seen


@pytest.mark.parametrize("n", SIZES + [0])
def test_chunks_cover_each_element_once(n):
    assert (_covered(n) == 1).all()
    assert threads.chunks(n) == -(-n // CHUNK)


@pytest.mark.parametrize("serial", [True, False])
@pytest.mark.parametrize("n", SIZES)
def test_flat_kernels_match_numpy_at_chunk_boundaries(n, serial):
    rng = np.random.default_rng(n)
    x, z, g = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    zero = np.float32(0.0)
    with threads.serial(serial):
        for code, pa, pb, fn in [(RELU, zero, zero, lambda v: np.maximum(v, 0)), (IDENT, zero, zero, lambda v: v),
                                 (TANH, np.float32(1.7), np.float32(0.6), lambda v: 1.7 * np.tanh(0.6 * v))]:
            y = np.full(n, np.nan, np.float32)
            neuron_cpu.forward(code, pa, pb, x, y)
            np.testing.assert_allclose(y, fn(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
            s = np.full(n, np.nan, np.float32)
            eltsum_cpu.axpby(np.float32(2.0), x, np.float32(-0.5), z, code, pa, pb, False, s, s)
            np.testing.assert_allclose(s, fn(2.0 * x.astype(np.float64) - 0.5 * z), rtol=1e-5, atol=1e-6)
        dx = np.full(n, np.nan, np.float32)
        neuron_cpu.backward(RELU, zero, zero, g, np.maximum(x, 0), x, dx)
        np.testing.assert_array_equal(dx, np.where(x > 0, g, 0))
        out = np.full(n, np.nan, np.float32)
        scale(np.float32(3.0), x, out)
        np.testing.assert_array_equal(out, np.float32(3.0) * x)
        y, arg = np.full(n, np.nan, np.float32), np.full(n, -1, np.float32)
        eltmax_cpu.max_into(x, 0, y, arg)
        eltmax_cpu.max_into(z, 1, y, arg)
        np.testing.assert_array_equal(y, np.maximum(x, z))
        np.testing.assert_array_equal(arg, np.where(z > x, 1, 0))
