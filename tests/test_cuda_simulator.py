"""Runs tests/cuda under the CUDA simulator, each file in a child process (CI has no GPU).

The simulator must be switched on before numba is first imported, so the CUDA tests
cannot share this process with the CPU tests. With a real GPU, tests/cuda is collected
directly instead (see conftest.py) and this test skips.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cudamode import cuda_mode


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "tests", "cuda")
# one test per file, each in a child of its own: pytest reports each file as it finishes
# instead of a single dot for ten minutes (the children share this session's Numba cache)
FILES = sorted(f for f in os.listdir(CUDA_DIR) if f.startswith("test_") and f.endswith(".py"))
_runs = {}          # file name -> Future of its child's CompletedProcess
_results = None     # under pytest-xdist: the folder where each child's result lands (name.json)


def results_dir():
    """Under pytest-xdist the controller runs the children and a worker runs the test: the
    result goes through a file, written whole (temporary file, then rename)."""
    global _results
    if _results is None:
        _results = tempfile.mkdtemp(prefix="cudasim-")
    return _results


def _run(name):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--full", "-p", "no:cacheprovider", "-n", "0",
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
        if name not in _runs:
            _runs[name] = pool.submit(_run if _results is None else _run_to_file, name)
    pool.shutdown(wait=False)


def forget_results():
    """The controller's end of session: the results folder goes."""
    if _results is not None:
        shutil.rmtree(_results, ignore_errors=True)


def _run_to_file(name):
    try:
        proc = _run(name)
    except Exception as e:          # a worker waits for this file: never leave it missing
        proc = subprocess.CompletedProcess([], -1, "", f"the simulator child did not run: {e!r}")
    path = os.path.join(_results, name + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}, f)
    os.replace(path + ".tmp", path)


def _result(name, config):
    """The child's CompletedProcess: its future in this process, the file the xdist controller's
    child writes, or (the file selected alone) a run of its own."""
    if name in _runs:
        return _runs[name].result()
    shared = getattr(config, "workerinput", {}).get("cudasim_results")
    if shared is None:
        return _run(name)
    path = os.path.join(shared, name + ".json")
    deadline = time.monotonic() + 1600
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: no result from its simulator child after {1600} s")
        time.sleep(1)
    with open(path) as f:
        return subprocess.CompletedProcess([], **json.load(f))


@pytest.mark.slow        # ~20 minutes of one core: every CUDA thread runs as a Python thread
@pytest.mark.skipif(cuda_mode() is not None, reason="tests/cuda is collected directly here (GPU or simulator)")
@pytest.mark.parametrize("name", FILES)
def test_cuda_suite_under_the_simulator(name, pytestconfig):
    pytest.importorskip("numba.cuda", reason="numba's CUDA target is not importable")
    proc = _result(name, pytestconfig)
    tail = "\n".join(proc.stdout.splitlines()[-60:])
    assert proc.returncode == 0, (f"{name} under the CUDA simulator failed (exit {proc.returncode}):\n"
                                  f"{tail}\n{proc.stderr[-3000:]}")
    assert " passed" in tail
