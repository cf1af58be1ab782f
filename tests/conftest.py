import os
import tempfile

from cudamode import cuda_mode

# A fresh Numba cache per test session: a stale cache can hide a change in a callee
# (numba#1833), and an installed package may not be writable.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="numba-cache-"))


# tests/cuda runs in this process only with a GPU or under the simulator; otherwise
# tests/test_cuda_simulator.py runs it in a child process with NUMBA_ENABLE_CUDASIM=1
# (the simulator must be chosen before numba is imported, so it cannot share a process).
collect_ignore = [] if cuda_mode() else ["cuda"]
