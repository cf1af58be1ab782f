"""Which CUDA the tests can use: 'sim' under NUMBA_ENABLE_CUDASIM=1, 'gpu' with a device, else None."""
import os


def cuda_mode():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "sim"
    try:
        from numba import cuda
        return "gpu" if cuda.is_available() else None
    except Exception:   # no numba-cuda, no driver: the CPU suite runs on
        return None
