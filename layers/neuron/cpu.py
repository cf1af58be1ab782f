"""Numba CPU kernels for the element-wise activations (also fused into conv, fc, pool).

`activate(code, pa, pb, x)` and `activate_grad(code, pa, pb, g, y, x)` are the one
definition of every function (codes and parameters: layers/neuron/spec.py); every kernel
that applies an activation calls them (compiled through their overloads, below). The
gradient is taken from the output y, except for abs and square (spec.NEEDS_INPUT), which
read the pre-activation x. Kernels run each parallel task's loop through
`specialised(code, body, args)`, which compiles separate loops for relu and the identity
(see there why).

Non-finite values: sqrt of x < 0 is NaN (cuda-convnet's sqrtf), and its gradient at y = 0 is
g / 0 (+-inf, NaN for g = 0), as cuda-convnet's g / (2y). np.divide is used for that
division because it follows IEEE (numba's `/` would raise ZeroDivisionError), and
because, unlike a constant inf, fastmath cannot fold it away.
"""
import inspect
import threading

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from layers import threads
from layers.threads import chunk_slice, chunks
from layers.neuron.spec import (ABS, BRELU, ELU, IDENT, LEAKY, LINEAR, LOGISTIC, NEEDS_INPUT, RELU, SELU,
                                SELU_ALPHA, SELU_SCALE, SOFTRELU, SQRT, SQUARE, TANH)

ZERO, HALF, ONE, TWO = np.float32(0.0), np.float32(0.5), np.float32(1.0), np.float32(2.0)
SCALE, SCALE_ALPHA = np.float32(SELU_SCALE), np.float32(SELU_SCALE * SELU_ALPHA)


@numba.njit(inline="always")
def uses_input(code):
    """True where activate_grad reads the pre-activation x (spec.NEEDS_INPUT)."""
    return code == ABS or code == SQUARE


def activate(code, pa, pb, x):
    """f(x) for the activation `code` with parameters pa, pb (float32 in, float32 out)."""
    if code == RELU:
        return x if x > ZERO else ZERO
    if code == TANH:
        return pa * np.tanh(pb * x)
    if code == LOGISTIC:
        return np.divide(ONE, ONE + np.exp(-x))
    if code == ABS:
        return abs(x)
    if code == LINEAR:
        return pa * x + pb
    if code == BRELU:
        return min(max(x, ZERO), pa)
    if code == SOFTRELU:          # log(1 + e^x) without overflow: max(x, 0) + log(1 + e^-|x|)
        return max(x, ZERO) + np.log1p(np.exp(-abs(x)))
    if code == SQUARE:
        return x * x
    if code == SQRT:
        return np.sqrt(x)
    if code == LEAKY:
        return x if x > ZERO else pa * x
    if code == ELU:
        return x if x > ZERO else pa * np.expm1(x)
    if code == SELU:
        return SCALE * x if x > ZERO else SCALE_ALPHA * np.expm1(x)
    return x


def activate_grad(code, pa, pb, g, y, x):
    """dL/dx from dL/dy = g, the output y and (abs, square only) the pre-activation x."""
    if code == RELU:
        return g if y > ZERO else ZERO
    if code == TANH:              # a b (1 - tanh^2) = (b / a) (a - y)(a + y)
        return g * np.divide(pb, pa) * (pa - y) * (pa + y)
    if code == LOGISTIC:
        return g * y * (ONE - y)
    if code == ABS:               # sign(x) g, branch-free: x's sign is as random as the data
        return np.sign(x) * g
    if code == LINEAR:
        return g * pa
    if code == BRELU:
        return g if y > ZERO and y < pa else ZERO
    if code == SOFTRELU:          # sigmoid(x) = 1 - e^-y
        return -g * np.expm1(-y)
    if code == SQUARE:
        return TWO * x * g
    if code == SQRT:
        return np.divide(HALF * g, y)
    if code == LEAKY:
        return g if y > ZERO else g * pa
    if code == ELU:               # a e^x = y + a where x <= 0
        return g if y > ZERO else g * (y + pa)
    if code == SELU:              # s a e^x = y + s a where x <= 0
        return g * SCALE if y > ZERO else g * (y + SCALE_ALPHA)
    return g


# In compiled code activate and activate_grad are these overloads: where `code` is a constant
# relu or identity (what `specialised` passes), Numba types and compiles that branch alone,
# not all thirteen (measured: 0.2-0.3 s less compiling per fused kernel, the same loops);
# any other code compiles the whole function above. The branches below repeat those two.
def _relu(code, pa, pb, x):
    return x if x > ZERO else ZERO


def _relu_grad(code, pa, pb, g, y, x):
    return g if y > ZERO else ZERO


def _identity(code, pa, pb, x):
    return x


def _identity_grad(code, pa, pb, g, y, x):
    return g


@overload(activate, prefer_literal=True)
def _activate_typed(code, pa, pb, x):
    if isinstance(code, types.IntegerLiteral) and code.literal_value in (RELU, IDENT):
        return _relu if code.literal_value == RELU else _identity
    return activate


@overload(activate_grad, prefer_literal=True)
def _activate_grad_typed(code, pa, pb, g, y, x):
    if isinstance(code, types.IntegerLiteral) and code.literal_value in (RELU, IDENT):
        return _relu_grad if code.literal_value == RELU else _identity_grad
    return activate_grad


@numba.njit(inline="always")
def specialised(code, body, args):
    """body(code, args), with `code` a compile-time constant for relu and the identity.

    With a runtime code, the element loop branches over all the functions, which LLVM then
    neither unswitches nor vectorises (relu's bias and gradient kernels ran 3-25x slower).
    Kernels run each parallel task's loop, `body` (an inline function), through this, so
    the common cases get loops of their own; the others share one. An `activation_kernel`
    compiles each case on its own, when first called with it (or splits the others off)."""
    if code == RELU:
        return body(RELU, args)
    if code == IDENT:
        return body(IDENT, args)
    return body(code, args)


@numba.njit(inline="always")
def _relu_only(code, body, args):
    return body(RELU, args)


@numba.njit(inline="always")
def _identity_only(code, body, args):
    return body(IDENT, args)


@numba.njit(inline="always")
def _any_code(code, body, args):
    return body(code, args)


# `specialised` in a kernel, one compilation per case: relu, the identity, every other code
ACTIVATIONS = threads.Variants("code", {RELU: "relu", IDENT: "ident"}, "any",
                               {"relu": {"specialised": _relu_only}, "ident": {"specialised": _identity_only},
                                "any": {"specialised": _any_code}})


def activation_kernel(fn=None, *, split=None, grad="dy"):
    """threads.kernel for a kernel taking `code` whose loops run through `specialised`: its
    relu and identity loops are compiled apart, each when first used (a relu net compiles
    relu's alone). Every other activation, with `split`, runs as the identity's loops plus
    the neuron layer's own element-wise pass: "forward", a kernel writing y = f(...) (and
    `pre`), then y = f(y); "backward", a kernel reading f' through its gradient argument
    `grad` (and y, pre), that gradient made first. Without `split` they share a third
    compilation. One pass more for the rarer functions; the kernels' most expensive
    compilations fewer (every fused kernel compiled a third copy for them)."""
    if fn is None:
        return lambda f: activation_kernel(f, split=split, grad=grad)
    if split is None:
        return threads.kernel(fn, variants=ACTIVATIONS)
    return SplitKernel(fn, threads.kernel_flags(), split, grad)


class SplitKernel(threads.Kernel):
    """An activation_kernel whose relu and identity loops are fused, the rest split off."""

    def __init__(self, fn, flags, split, grad):
        super().__init__(fn, flags, ACTIVATIONS)
        if split not in ("forward", "backward"):
            raise ValueError(f"split must be 'forward' or 'backward', got {split!r}")
        names = list(inspect.signature(fn).parameters)
        self.split, self._y, self._pre = split, names.index("y"), names.index("pre")
        self._grad = names.index(grad) if split == "backward" else None

    def __call__(self, *args):
        code = args[self._at]
        if code == RELU or code == IDENT:
            return super().__call__(*args)
        args = list(args)
        pa, pb = args[self._at + 1], args[self._at + 2]
        args[self._at] = IDENT
        y, pre = args[self._y], args[self._pre]
        if self.split == "forward":
            super().__call__(*args)
            if code in NEEDS_INPUT:
                np.copyto(pre, y)             # the pre-activation, for the gradient
            out = y if y.flags.c_contiguous else np.ascontiguousarray(y)
            forward(code, pa, pb, out.reshape(-1), out.reshape(-1))
            if out is not y:
                y[...] = out
            return None
        g = args[self._grad]
        dz = _scratch(g.shape)
        flat = np.ascontiguousarray(g).reshape(-1)
        x = np.ascontiguousarray(pre).reshape(-1) if code in NEEDS_INPUT else flat
        backward(code, pa, pb, flat, np.ascontiguousarray(y).reshape(-1), x, dz.reshape(-1))
        args[self._grad] = dz
        return super().__call__(*args)


_local = threading.local()


def _scratch(shape):
    """A float32 array of `shape`, this thread's own, kept for the next call of that shape."""
    kept = getattr(_local, "scratch", None)
    if kept is None:
        kept = _local.scratch = {}
    a = kept.get(shape)
    if a is None:
        a = kept[shape] = np.empty(shape, np.float32)
    return a




@numba.njit(inline="always")
def _forward_chunk(code, args):
    pa, pb, x, out, c = args
    s = chunk_slice(c, x.size)
    xs, outs = x[s], out[s]
    for i in range(xs.size):
        outs[i] = activate(code, pa, pb, xs[i])


@activation_kernel
def forward(code, pa, pb, x, out):
    """out = f(x), both flat float32 (may alias)."""
    for c in numba.prange(chunks(x.size)):
        specialised(code, _forward_chunk, (pa, pb, x, out, c))


@numba.njit(inline="always")
def _backward_chunk(code, args):
    pa, pb, g, y, x, out, c = args
    keep = uses_input(code)
    s = chunk_slice(c, g.size)
    gs, ys, xs, outs = g[s], y[s], x[s], out[s]
    for i in range(gs.size):
        outs[i] = activate_grad(code, pa, pb, gs[i], ys[i], xs[i] if keep else ZERO)


@activation_kernel
def backward(code, pa, pb, g, y, x, out):
    """out = dL/dx, flat float32; `x` is only read where uses_input(code)."""
    for c in numba.prange(chunks(g.size)):
        specialised(code, _backward_chunk, (pa, pb, g, y, x, out, c))
