import os
import tempfile

# A fresh Numba cache per test session: a stale cache can hide a change in a callee
# (numba#1833), and an installed package may not be writable.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="numba-cache-"))
