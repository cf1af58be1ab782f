"""Where Numba caches the compiled kernels: a folder per version of the kernels' sources.

Numba keys a cache entry on the file of the function it compiled, not on the files of the
functions it inlined (numba#1833): after an edit to layers/neuron/cpu.py, conv's cached
kernels would keep the old activations and compute the wrong thing without a word. So the
default cache folder is named by a hash of every source file under layers/ and numba's
version; a changed source means a fresh folder (one compile), and folders unused for 30
days are removed. NUMBA_CACHE_DIR, when set, is used as it is.
"""
import hashlib
import os
import shutil
import time

KEEP_DAYS = 30


def source_hash(root):
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def configure():
    """Set NUMBA_CACHE_DIR (unless set) before numba is imported; returns the folder."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    from importlib.metadata import PackageNotFoundError, version
    try:
        numba_version = version("numba")
    except PackageNotFoundError:
        numba_version = "?"
    base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "convnet-engine", "numba")
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(base, f"{source_hash(here)}-numba{numba_version}")
    try:
        os.makedirs(folder, exist_ok=True)
        os.utime(folder)                      # in use: not pruned
        _prune(base, keep=folder)
    except OSError:                           # no writable home: numba's default, beside the code
        return None
    os.environ["NUMBA_CACHE_DIR"] = folder
    return folder


def _prune(base, keep):
    cutoff = time.time() - KEEP_DAYS * 86400
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if path != keep and os.path.isdir(path) and os.path.getmtime(path) < cutoff:
            shutil.rmtree(path, ignore_errors=True)
