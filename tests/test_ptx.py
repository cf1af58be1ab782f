"""Every CUDA kernel compiles to PTX for sm_90 (H100), without a GPU.

The simulator runs kernels as Python, so it cannot see typing errors (float64 promotion,
unsupported constructs) that the real compiler rejects; `cuda.compile_ptx` can, given
numba-cuda with the CUDA 12 toolkit wheels (pip install -e '.[gpu]').
"""
import importlib.util
import os
import pkgutil

import pytest

import layers

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx does not exist under the CUDA simulator", allow_module_level=True)
# numba's deprecated built-in CUDA target needs a driver to compile kernels that call device
# functions; numba-cuda compiles them anywhere. Only its absence skips: with it installed, a
# kernel (or a toolkit) that does not compile is a failure.
if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("PTX checks need numba-cuda: pip install -e '.[gpu]'", allow_module_level=True)
from numba import cuda  # noqa: E402


def cuda_modules():
    """engine's CUDA backend, layers' shared CUDA modules (cuda in the name), every type's cuda.py."""
    names = ["engine.cuda_backend"]
    for info in pkgutil.iter_modules(layers.__path__):
        if info.ispkg and importlib.util.find_spec(f"layers.{info.name}.cuda"):
            names.append(f"layers.{info.name}.cuda")
        elif not info.ispkg and "cuda" in info.name:
            names.append(f"layers.{info.name}")
    return sorted(names)


def all_kernels():
    out = []
    for name in cuda_modules():
        module = importlib.import_module(name)
        for kernel, sig in getattr(module, "KERNELS", []):
            out.append(pytest.param(kernel, sig, id=f"{name}.{kernel.py_func.__name__}"))
    return out


def test_every_layer_type_has_cuda_kernels():
    missing = [t for t, cls in layers.REGISTRY.items()
               if importlib.util.find_spec(cls.__module__ + ".cuda") is None]
    assert not missing, f"layer types without a CUDA implementation: {missing}"


@pytest.mark.slow        # numba-cuda compiling every kernel: with the simulator suite in --full
@pytest.mark.parametrize("kernel, sig", all_kernels())
def test_kernel_compiles_for_sm90_in_float32(kernel, sig):
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx
    # float64 creeping into a float32 kernel (a Python float constant, a float argument)
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"


@pytest.mark.parametrize("name", cuda_modules())
def test_every_kernel_is_listed(name):
    """Each module's KERNELS names every @cuda.jit kernel it defines (not device functions)."""
    from numba.cuda.dispatcher import CUDADispatcher
    m = importlib.import_module(name)
    defined = {n for n, obj in vars(m).items()
               if isinstance(obj, CUDADispatcher) and obj.py_func.__module__ == m.__name__
               and not obj.targetoptions.get("device")}
    assert defined == {k.py_func.__name__ for k, _ in getattr(m, "KERNELS", [])}
