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
