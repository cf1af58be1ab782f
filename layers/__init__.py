"""Layer types: one sub-package per YAML `type`, each registering itself on import.

Adding a layer type is adding a folder here (its class, NumPy reference and kernels)
and a test file; nothing in `engine/` changes.
"""
import importlib
import pkgutil

from layers import kernel_cache

kernel_cache.configure()     # before anything imports numba, which reads NUMBA_CACHE_DIR once

from layers.base import REQUIRED, Key, Layer, LayerError, join_inputs, split_grad  # noqa: E402
from layers.registry import REGISTRY, get, register  # noqa: E402

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REQUIRED", "Key", "Layer", "LayerError", "REGISTRY", "get", "register",
           "join_inputs", "split_grad"]
