"""Helpers for the CUDA tests (run under NUMBA_ENABLE_CUDASIM=1 in CI, or on a GPU)."""
import numpy as np
from numba import cuda


def to_dev(a, dtype=np.float32):
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def host(d):
    return d.copy_to_host()
