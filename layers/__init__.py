"""Layer types: one sub-package per YAML `type`, each registering itself on import.

Adding a layer type is adding a folder here (its class, NumPy reference and kernels)
and a test file; nothing in `engine/` changes.
"""
import importlib
import os
import pkgutil

from layers import kernel_cache

kernel_cache.configure()     # before anything imports numba, which reads NUMBA_CACHE_DIR once
# OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each GEMM, holding the cores
# the Numba kernels that follow want ("layers" threading: resnet-digits' training step
# 240 -> 150 ms, resnet18's at batch 32 4.2 -> 3.4 s); 2^4 cycles: they sleep at once. Read
# when numpy loads OpenBLAS, so set here, before; a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from layers.base import REQUIRED, Key, Layer, LayerError, join_inputs, split_grad  # noqa: E402
from layers.registry import REGISTRY, get, register  # noqa: E402

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REQUIRED", "Key", "Layer", "LayerError", "REGISTRY", "get", "register",
           "join_inputs", "split_grad"]
