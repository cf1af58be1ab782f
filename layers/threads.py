"""Pick Numba's threading layer before any parallel kernel runs.

The GNU OpenMP layer that the numba wheels default to costs ~5 ms per parallel call
on small VMs (measured: shared/notes/numba.md) and kills forked children;
`workqueue` costs ~20 us and is fork-safe. A user's NUMBA_THREADING_LAYER wins.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
