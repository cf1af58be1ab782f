"""Numba's cache folder is named by the kernels' sources, so an edit to an inlined helper
(an activation used by conv's kernels) never runs stale machine code (numba#1833)."""
import os
import subprocess
import sys
import time

from layers import kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_hash_follows_every_source_file(tmp_path):
    (tmp_path / "conv").mkdir()
    (tmp_path / "conv" / "cpu.py").write_text("def f(): pass\n")
    (tmp_path / "neuron.py").write_text("A = 1\n")
    first = kernel_cache.source_hash(str(tmp_path))
    assert kernel_cache.source_hash(str(tmp_path)) == first
    (tmp_path / "neuron.py").write_text("A = 2\n")            # only the inlined helper changed
    second = kernel_cache.source_hash(str(tmp_path))
    assert second != first
    (tmp_path / "conv" / "__pycache__").mkdir()
    (tmp_path / "conv" / "__pycache__" / "x.py").write_text("junk")
    assert kernel_cache.source_hash(str(tmp_path)) == second


def cache_dir_of_a_fresh_process(env):
    code = "import engine, os, numba.core.config as c; print(os.environ['NUMBA_CACHE_DIR']); print(c.CACHE_DIR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=True).stdout.split()
    return out


def test_engine_picks_a_folder_per_source_version_and_prunes_old_ones(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    base = tmp_path / "convnet-engine" / "numba"
    old = base / "0123456789abcdef-numba0.1"
    old.mkdir(parents=True)
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    folder, numba_sees = cache_dir_of_a_fresh_process(env)
    assert numba_sees == folder and folder.startswith(str(base))
    assert kernel_cache.source_hash(os.path.join(ROOT, "layers")) in os.path.basename(folder)
    assert not old.exists()


def test_a_set_numba_cache_dir_is_kept(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "mine"), XDG_CACHE_HOME=str(tmp_path / "x"))
    assert cache_dir_of_a_fresh_process(env) == [str(tmp_path / "mine")] * 2
    assert not (tmp_path / "x").exists()


# ---- what is compiled, and by whom -------------------------------------------------------
def test_activation_kernels_compile_one_variant_per_case_when_first_called():
    import numpy as np

    from layers import threads
    from layers.neuron import cpu as neuron_cpu
    from layers.neuron.spec import IDENT, LOGISTIC, RELU, TANH
    kern = threads.Kernel(neuron_cpu.forward.fn, neuron_cpu.forward.flags, neuron_cpu.ACTIVATIONS)
    x = np.linspace(-3, 3, 41, dtype=np.float32)
    out = np.empty_like(x)
    one = np.float32(1.0)
    with threads.serial(False):                           # the parallel kernels, small as x is
        kern(RELU, one, one, x, out)
        np.testing.assert_array_equal(out, np.maximum(x, 0))
        assert list(kern._dispatchers) == [(False, neuron_cpu.ACTIVATIONS.pick(RELU))]   # relu's loops alone
        kern(TANH, one, one, x, out)
        np.testing.assert_allclose(out, np.tanh(x), rtol=1e-6, atol=1e-6)
        kern(LOGISTIC, one, one, x, out)                  # the other codes share one compilation
        np.testing.assert_allclose(out, 1 / (1 + np.exp(-x)), rtol=1e-6)
    with threads.serial():
        kern(IDENT, one, one, x, out)
    np.testing.assert_array_equal(out, x)
    assert set(kern._dispatchers) == {(False, neuron_cpu.ACTIVATIONS.pick(RELU)),
                                      (False, neuron_cpu.ACTIVATIONS.pick(TANH)),
                                      (True, neuron_cpu.ACTIVATIONS.pick(IDENT))}
    names = {d.py_func.__qualname__ for d in kern._dispatchers.values()}
    assert len(names) == 3          # apart in Numba's on-disk cache too


FIRST_CALL = """
import sys, time
import numpy as np
from layers.neuron import cpu
from layers.neuron.spec import SOFTRELU
x = np.linspace(-3, 3, 41, dtype=np.float32)
out = np.empty_like(x)
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))          # both call at the same moment
cpu.backward(SOFTRELU, np.float32(1), np.float32(1), x, x, x, out)
d, = cpu.backward._dispatchers.values()          # the twin this small call runs
print(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
"""


def test_two_processes_starting_together_compile_a_kernel_once(tmp_path):
    """MPI ranks on one machine, test workers: the second waits for the first's compilation
    and loads it from the cache instead of compiling it again at the same time."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_CALL, str(start)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(tuple(int(v) for v in out.split()))
    assert sorted(results) == [(0, 1), (1, 0)], results     # one compiled (a miss), one loaded (a hit)


def test_rarer_activations_run_the_identity_loops_and_the_neuron_pass():
    """conv, fc, local and pool compile relu's and the identity's loops only; tanh, abs (which
    keeps its input for the gradient) and the others add the neuron layer's own pass."""
    import numpy as np

    import layers
    from layers.conv import cpu as conv_cpu
    from layers.fc import cpu as fc_cpu
    from layers.local import cpu as local_cpu
    from layers.neuron import cpu as neuron_cpu
    from layers.pool import cpu as pool_cpu
    from layers.pool import reference as pool_ref
    x = (np.random.default_rng(0).permutation(2 * 3 * 9 * 9).reshape(2, 3, 9, 9) * 0.01 - 2.4).astype(np.float32)
    for fn in ("tanh", "abs", "elu[0.5]"):
        for mode in ("max", "avg"):
            layer = layers.get("pool")("p", {"mode": mode, "size": 3, "stride": 2, "neuron": fn}, [(3, 9, 9)])
            y = layer.forward(x, {})
            np.testing.assert_allclose(y, pool_ref.forward(x, mode, 3, 2, fn), rtol=1e-6, atol=1e-6)
            g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
            np.testing.assert_allclose(layer.backward(g, {})[0], pool_ref.backward(x, g, mode, 3, 2, fn),
                                       rtol=1e-5, atol=1e-6)
    split = [conv_cpu.bias_act, conv_cpu.grad_gather, conv_cpu.direct_forward, conv_cpu.direct_grad_gather,
             fc_cpu.bias_act, fc_cpu.grad_act_bias, local_cpu.bias_act, local_cpu.grad_gather,
             pool_cpu.max_forward, pool_cpu.max_backward, pool_cpu.avg_forward, pool_cpu.avg_backward]
    assert all(isinstance(k, neuron_cpu.SplitKernel) for k in split)
    assert all(choice != "any" for k in split for _, choice in k._dispatchers)
    assert "ident" in {choice for _, choice in pool_cpu.avg_forward._dispatchers}
