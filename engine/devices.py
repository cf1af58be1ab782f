"""Which backend runs a net: the device names users give and the backend class of each.

A backend is imported only when it is used (the CUDA one needs numba's CUDA target).
"""
import importlib

from engine.errors import DeviceError

BACKENDS = {"cpu": "engine.cpu_backend:CpuBackend", "cuda": "engine.cuda_backend:CudaBackend"}


def resolve(device):
    """"cpu" | "cuda" | "auto" -> "cpu" or "cuda"; CUDA asked for where there is none is an error."""
    if device not in (*BACKENDS, "auto"):
        raise ValueError(f"device must be {', '.join(BACKENDS)} or auto, got {device!r}")
    if device == "cpu":
        return "cpu"
    try:
        from engine.cuda_backend import available
    except ImportError as e:          # numba without its CUDA target
        if device == "auto":
            return "cpu"
        raise DeviceError(f"CUDA is not usable here ({e}); use device='cpu' (or 'auto'), or "
                          "pip install -e '.[gpu]'") from None
    if available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise DeviceError("no CUDA device is available; use device='cpu' (or 'auto'), or install an "
                      "NVIDIA driver and `pip install -e '.[gpu]'`")


def backend_for(device, net, **options):
    """A new backend of kind `device` (resolved) running `net`."""
    module, name = BACKENDS[device].split(":")
    return getattr(importlib.import_module(module), name)(net, **options)
