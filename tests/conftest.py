import os
import tempfile

# A fresh Numba cache per test session: a stale cache can hide a change in a callee
# (numba#1833), and an installed package may not be writable. Set before anything
# imports numba (helpers does), which reads it once.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="numba-cache-"))

import helpers  # noqa: E402
import pytest  # noqa: E402
from cudamode import cuda_mode  # noqa: E402


# tests/cuda runs in this process only with a GPU or under the simulator; otherwise
# tests/test_cuda_simulator.py runs it in a child process with NUMBA_ENABLE_CUDASIM=1
# (the simulator must be chosen before numba is imported, so it cannot share a process).
collect_ignore = [] if cuda_mode() else ["cuda"]


@pytest.fixture(autouse=True)
def only_builtin_types_afterwards():
    """Tests check every registered type: leave none of a test's plugins behind."""
    yield
    import layers                 # here, not at the top: NUMBA_CACHE_DIR is set before numba loads
    from engine import plugins
    plugins.forget()
    assert all(cls.__module__.startswith("layers.") for cls in layers.REGISTRY.values())


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked slow (the CUDA simulator suite, long training, "
                          "full-size fuzzing): what CI runs")


def pytest_configure(config):
    helpers.FULL = config.getoption("--full")    # test modules size their work by it at import


SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        # deselected, not skipped: the fast run's summary stays free of skip lines
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=slow)
        config.stash[SLOW_LEFT_OUT] = len(slow)


def pytest_collection_finish(session):
    # the CUDA simulator's children start in the background at once (test_cuda_simulator.start)
    sims = [item for item in session.items if getattr(item, "originalname", "") == "test_cuda_suite_under_the_simulator"]
    if sims and not session.config.option.collectonly:
        sims[0].module.start([item.callspec.params["name"] for item in sims])


def pytest_terminal_summary(terminalreporter, config):
    left_out = config.stash.get(SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests left out: run `python -m pytest --full` "
                                    "for the full suite (as CI does)")
