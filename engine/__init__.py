"""cuda-convnet reborn: YAML nets run by Numba kernels.

    import engine
    net = engine.load("nets/alexnet.yaml")          # a net file: fresh weights
    print(net.summary())
    net = engine.load("runs/lenet5-20261124-101500")  # a run folder: its net and trained weights
    probs = net.predict(images)                       # raw images in, class probabilities out
    engine.latency_mode()        # first, in a process that predicts one image at a time
"""
import layers  # noqa: F401  first: it chooses Numba's cache folder before numba is imported
from engine.checkpoint import CheckpointError
from engine.columns import latency_mode
from engine.datasets import DataError
from engine.errors import ConfigError, DeviceError, MemoryLimitError
from engine.net import Net, load

__all__ = ["CheckpointError", "ConfigError", "DataError", "DeviceError", "MemoryLimitError", "Net", "latency_mode",
           "load"]
__version__ = "0.1.0"
