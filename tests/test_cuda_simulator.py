"""Runs tests/cuda under the CUDA simulator, each file in a child process (CI has no GPU).

The simulator must be switched on before numba is first imported, so the CUDA tests
cannot share this process with the CPU tests. With a real GPU, tests/cuda is collected
directly instead (see conftest.py) and this test skips.
"""
import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from cudamode import cuda_mode


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "tests", "cuda")
# one test per file, each in a child of its own: pytest reports each file as it finishes
# instead of a single dot for ten minutes (the children share this session's Numba cache)
FILES = sorted(f for f in os.listdir(CUDA_DIR) if f.startswith("test_") and f.endswith(".py"))
_runs = {}          # file name -> Future of its child's CompletedProcess


def _run(name):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--full", "-p", "no:cacheprovider",
                           os.path.join(CUDA_DIR, name)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)


def start(names):
    """Start the selected files' children in the background, one per core, as soon as the
    session is collected (conftest.py): the simulator is one busy core per child, and the
    CPU tests before them mostly leave the other core idle (they wait on Numba's compiler)."""
    if cuda_mode() is not None or importlib.util.find_spec("numba.cuda") is None:
        return
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="cudasim")
    for name in names:
        _runs[name] = pool.submit(_run, name)
    pool.shutdown(wait=False)


@pytest.mark.slow        # ~20 minutes of one core: every CUDA thread runs as a Python thread
@pytest.mark.skipif(cuda_mode() is not None, reason="tests/cuda is collected directly here (GPU or simulator)")
@pytest.mark.parametrize("name", FILES)
def test_cuda_suite_under_the_simulator(name):
    pytest.importorskip("numba.cuda", reason="numba's CUDA target is not importable")
    proc = _runs[name].result() if name in _runs else _run(name)
    tail = "\n".join(proc.stdout.splitlines()[-60:])
    assert proc.returncode == 0, (f"{name} under the CUDA simulator failed (exit {proc.returncode}):\n"
                                  f"{tail}\n{proc.stderr[-3000:]}")
    assert " passed" in tail
