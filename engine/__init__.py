"""cuda-convnet reborn: YAML nets run by Numba kernels.

    import engine
    net = engine.load("nets/alexnet.yaml")
    print(net.summary())
"""
from engine.errors import ConfigError, DeviceError, MemoryLimitError
from engine.net import Net, load

__all__ = ["ConfigError", "DeviceError", "MemoryLimitError", "Net", "load"]
__version__ = "0.1.0"
