"""Finite-difference gradient checks for layers (the check cuda-convnet and Caffe run on every layer).

The loss is a random projection L = sum(y * R) of the layer's output (or, for a cost
layer, its own cost), so every output element contributes. Gradients from `backward`
are compared with central differences on a random sample of input and parameter
entries, by relative L2 error as cuda-convnet's `checkGradient` does.

Why float32 differences pass at 2e-2: the kernels are float32, so a central
difference with step h carries a rounding error of about eps32 * |L| / h
(~1e-7 * 10 / 1e-2 = 1e-4) plus a truncation error of order h^2 * f''' (~1e-4):
far below cuda-convnet's 2e-2 threshold, while a wrong gradient (a missing term,
a transposed index) gives errors of order 1.
"""
from types import SimpleNamespace

import numpy as np

from engine.cpu_backend import CpuBackend
from engine.executor import Executor


class _OneLayer:
    """One layer as a graph of its own, run by the executor (the walk every net uses):
    its inputs are "input0", "input1", ..."""

    def __init__(self, layer, xs, params, labels, train, seed):
        self.node = SimpleNamespace(name=layer.name or "layer", layer=layer, gpu=0,
                                    inputs=[f"input{i}" for i in range(len(xs))])
        self.executor = Executor([self.node], CpuBackend(layer_params={self.node.name: params}))
        self.inputs = dict(zip(self.node.inputs, xs))
        self.labels, self.train, self.seeds = labels, train, {self.node.name: seed}

    def forward(self):
        return self.executor.forward(self.inputs, self.train, self.seeds)[self.node.name]

    def loss(self, proj):
        y = self.forward()
        if self.node.layer.is_cost:
            return float(self.executor.backend.cost(self.node, self.labels)[0])
        return float(np.sum(y.astype(np.float64) * proj))

    def gradients(self, proj):
        """(input grads per input, param grads) from the layer's own backward."""
        y = self.forward()
        dy = None if proj is None else proj.astype(np.float32).reshape(y.shape)
        _, dparams, dxs = self.executor.backward(self.labels, dy=dy, input_grads=True)
        return ([np.array(dxs[name], np.float64) for name in self.node.inputs],
                {k[len(self.node.name) + 1:]: np.array(v, np.float64) for k, v in dparams.items()})


def analytic(layer, xs, params, proj=None, labels=None, train=False, seed=0):
    """(input grads per input, param grads) from the layer's own backward."""
    return _OneLayer(layer, xs, params, labels, train, seed).gradients(proj)


def numeric_at(one, target, index, h, proj):
    old = target[index]
    target[index] = old + h
    up = one.loss(proj)
    target[index] = old - h
    down = one.loss(proj)
    target[index] = old
    return (up - down) / (2 * h)


def check(layer, xs, params=None, labels=None, train=False, h=1e-2, samples=40,
          tol=2e-2, seed=0):
    """Assert that `layer.backward` matches central differences.

    xs: list of float32 inputs (one per layer input); params: dict of float32 arrays.
    Returns {name: relative error} for the inputs ("input0", ...) and params.
    """
    params = params if params is not None else {}
    rng = np.random.default_rng(seed + 1)
    proj = None
    if not layer.is_cost:
        n = xs[0].shape[0]
        proj = rng.standard_normal((n,) + tuple(layer.output_shape))
    one = _OneLayer(layer, xs, params, labels, train, seed)
    dxs, dparams = one.gradients(proj)
    targets = [(f"input{i}", x, g) for i, (x, g) in enumerate(zip(xs, dxs))]
    targets += [(k, params[k], dparams[k]) for k in sorted(dparams)]
    errors = {}
    for name, arr, grad in targets:
        assert grad.shape == arr.shape, f"{name}: gradient shape {grad.shape} != {arr.shape}"
        flat_idx = rng.choice(arr.size, size=min(samples, arr.size), replace=False)
        idxs = [np.unravel_index(i, arr.shape) for i in flat_idx]
        num = np.array([numeric_at(one, arr, ix, h, proj)
                        for ix in idxs])
        ana = np.array([grad[ix] for ix in idxs])
        scale = max(np.linalg.norm(ana), np.linalg.norm(num), 1e-6)
        err = np.linalg.norm(num - ana) / scale
        errors[name] = err
        assert err < tol, (f"{layer.type} '{layer.name}' {name}: relative error {err:.3g} >= {tol} "
                           f"(numeric {num[:4]}, analytic {ana[:4]})")
    return errors
