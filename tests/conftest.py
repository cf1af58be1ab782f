import os
import tempfile

# A fresh Numba cache per test session: a stale cache can hide a change in a callee
# (numba#1833), and an installed package may not be writable. Set before anything
# imports numba (helpers does), which reads it once.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="numba-cache-"))
# No compile-ahead helper processes (engine.compile_ahead) but in its own tests: the suite's
# workers already use every core, and its timing tests want no process they did not start.
os.environ.setdefault("ENGINE_COMPILE_AHEAD", "0")
# Workqueue, as the engine picks, in every test process: `predict` run in-process (the CLI
# tests) would otherwise move a worker that has not run a parallel kernel yet to OpenMP
# (engine.latency_mode), whose spinning workers slow the later tests' BLAS-threaded steps.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

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
        if hasattr(config, "workeroutput"):          # a pytest-xdist worker: tell the controller
            config.workeroutput["slow_left_out"] = len(slow)


def pytest_collection_finish(session):
    # the CUDA simulator's children start in the background at once (test_cuda_simulator.start);
    # under pytest-xdist the controller starts them (pytest_xdist_node_collection_finished)
    if hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return
    sims = [item for item in session.items if getattr(item, "originalname", "") == "test_cuda_suite_under_the_simulator"]
    if sims:
        sims[0].module.start([item.callspec.params["name"] for item in sims])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, in the controller: where the workers find the simulator children's results."""
    import test_cuda_simulator
    node.workerinput["cudasim_results"] = test_cuda_simulator.results_dir()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist, in the controller: start the simulator children once, as soon as the
    first worker has collected (every worker collects the same items)."""
    import test_cuda_simulator
    prefix = "tests/test_cuda_simulator.py::test_cuda_suite_under_the_simulator["
    test_cuda_simulator.start([i[len(prefix):-1] for i in ids if i.startswith(prefix)])


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        import test_cuda_simulator
        test_cuda_simulator.forget_results()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    left_out = getattr(node, "workeroutput", {}).get("slow_left_out")
    if left_out:
        node.config.stash[SLOW_LEFT_OUT] = left_out


def pytest_terminal_summary(terminalreporter, config):
    left_out = config.stash.get(SLOW_LEFT_OUT, 0)
    if left_out and not hasattr(config, "workerinput"):
        terminalreporter.write_line(f"{left_out} slow tests left out: run `python -m pytest --full` "
                                    "for the full suite (as CI does)")
