"""Catching NaN and Inf in training, and naming the layer where they were born.

The per-step check reads only the loss and the parameter gradients (one pass, no
allocation; on CUDA one flag per array, read once), before the update; the per-layer
search re-runs the failed batch on the same backend with the same dropout draws and
stops at the first non-finite array, in forward then backward order.
"""
import numba
import numpy as np

from layers import threads  # noqa: F401  (threading layer chosen before any kernel runs)

_EXPONENT = np.uint32(0x7F800000)


# No fastmath here: its no-NaN flags would let the compiler drop the very test we need.
# The check reads the bits instead of comparing floats, so it vectorises all the same.
@numba.njit(nogil=True, cache=True)
def _count_nonfinite(bits):
    bad = 0
    for i in range(bits.size):
        bad += (bits[i] & _EXPONENT) == _EXPONENT
    return bad


def all_finite(a):
    """True when a float32 array holds no NaN or Inf (float64 arrays are checked too)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        return _count_nonfinite(a.reshape(-1).view(np.uint32)) == 0
    return bool(np.isfinite(a).all())


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf; the message names the layer, the epoch and the batch."""


class _Found(Exception):
    def __init__(self, kind, layer):
        super().__init__(kind, layer)
        self.kind, self.layer = kind, layer


def locate(net, x, labels, rng_state=None):
    """Where a step first goes non-finite: "the weights of layer 'fc6'", "the output of
    layer 'conv2'", ... or None if the re-run is finite. `rng_state` is the dropout
    generator's state before the failed step, so the re-run draws the same masks."""
    backend = net.backend
    key = backend.first_nonfinite(backend.params)
    if key is not None:
        layer, pname = key.rsplit(".", 1)
        return f"the {pname} of layer '{layer}' (already non-finite before this batch)"
    if rng_state is not None:
        net.rng.bit_generator.state = rng_state

    def stop_at_nonfinite(kind, layer, array):
        if not backend.all_finite(array):
            raise _Found(kind, layer)
    try:
        net.loss_and_grads(x, labels, train=True, watch=stop_at_nonfinite)
    except _Found as f:
        if f.kind == "cost":
            return f"the cost of layer '{f.layer}' (its input is finite)"
        return f"the {f.kind} of layer '{f.layer}'"
    return None


def message(what, where, lr, last_checkpoint):
    """One line: what went non-finite, where, the likely cause, what was kept."""
    text = f"training stopped: {what} at {where}"
    text += f"; the learning rate ({lr:g}) is probably too high for this net (try a tenth of it)"
    if last_checkpoint:
        text += f"; the newest checkpoint, {last_checkpoint}, is from before the fault"
    return text
