"""The CPU backend: NumPy arrays, the layers' Numba CPU kernels, lanes on threads.

Every backend (this one, engine.cuda_backend) implements the same interface, which the
executor, `Net`, the optimizer and the tools use; nothing outside a backend touches its
insides:

  arrays    params, state, layer_params(node) (its parameters and state, what the layer reads),
            layer_state(node), input(x, labels), labels(labels), to_host(a) (a copy),
            zeros(shape),
            pull(host params) / push(host params), synchronize(), value(loss),
            loss_array(loss), copy_of(a), add_into(dst, src), combine_losses([(loss, n)])
  lanes     lane_of(node), run(order, lane_of, waits_for, work), split_from, run_halves(f, g),
            one_lane() (a context: a layer run alone as its lane would run it)
  layers    join(node, xs, copy), split(node, dx), gather(node, grads, copy),
            forward(node, x, train, seed), backward(node, dy, need_dx), cost(node, labels),
            scale(node, dy, weight), update_state(node) (after a training step's forward)
  guards    first_nonfinite({key: array}) -> key or None, all_finite(a),
            room(held) -> (bytes, source), held_bytes(copies)
  optimizer update(optimizer, key, arrays, scalars): one parameter's update kernel
  timing    clock_start(node) -> token, clock_stop(token, node) -> seconds, timing_note()
  steps     end_step(): after a step has been issued
"""
import contextlib
import time

import numpy as np

from layers.base import join_inputs, split_grad

from engine import columns, finite, memory


class CpuBackend:
    kind = "cpu"

    def __init__(self, net=None, layer_params=None, streams=None):
        """net: the Net whose host parameters and threading this backend uses. Without one:
        loose arrays (an optimizer's), or the layers whose {layer: {param: array}} are
        `layer_params` (the layer gradient checker), on one lane. `streams` is CUDA's; the
        CPU's lanes follow Net.threading."""
        self.net = net
        self.params = net.parameters() if net is not None else {}
        self.state = net.layer_state() if net is not None else {}    # live host arrays too
        self._layer_params = layer_params or {}
        self._layer_state = {}
        for node in (net.layers if net is not None else []):
            self._layer_state[node.name] = {s: self.state[f"{node.name}.{s}"] for s in node.layer.state_shapes()}
            self._layer_params[node.name] = dict(
                {p: self.params[f"{node.name}.{p}"] for p in node.layer.param_shapes()},
                **self._layer_state[node.name])
        self._scratch = {}      # joined inputs and summed gradients, reused between steps
        self._clock_overhead = None

    # ---- arrays -----------------------------------------------------------------
    def layer_params(self, node):
        return self._layer_params.get(node.name, {})

    def layer_state(self, node):
        """{name: array} of the layer's state; loose layers (the gradient checker's) keep
        theirs among `layer_params`."""
        if node.name in self._layer_state:
            return self._layer_state[node.name]
        params = self.layer_params(node)
        return {s: params[s] for s in node.layer.state_shapes()}

    def input(self, x, labels=None):
        return x, labels

    def labels(self, labels):
        return labels

    def to_host(self, a):
        """A host copy (the layers reuse their arrays at the next step)."""
        return np.array(a)

    def zeros(self, shape):
        return np.zeros(shape, np.float32)

    def pull(self, host_params):
        """The live parameters and state are the host arrays: nothing to copy."""

    def push(self, host_params):
        pass

    def synchronize(self):
        pass

    def value(self, loss):
        return float(loss)

    def loss_array(self, loss):
        return np.asarray([loss], np.float32)

    def copy_of(self, a):
        return np.array(a, np.float32)

    def add_into(self, dst, src):
        dst += src

    def combine_losses(self, parts):
        return sum(loss * n for loss, n in parts) / sum(n for _, n in parts)

    # ---- lanes ------------------------------------------------------------------
    @property
    def split_from(self):
        """The smallest batch that threading "batch" splits in two (None: never)."""
        return columns.MIN_SPLIT if self._mode() == "batch" else None

    def lane_of(self, node):
        return node.gpu if self._mode() == "columns" else 0

    def run(self, order, lane_of, waits_for, work):
        columns.run(order, lane_of, waits_for, work)

    def run_halves(self, first, second):
        columns.run_pair(first, second)

    def one_lane(self):
        """A layer timed alone runs on one core where its lane would (columns, batch)."""
        if self._mode() in ("columns", "batch"):
            return columns.single_core()
        return contextlib.nullcontext()

    # ---- layers -----------------------------------------------------------------
    def join(self, node, xs, copy):
        out = None
        if len(node.inputs) > 1 and node.layer.join != "separate":
            out = self._buffer((copy, node.name, "join"), (xs[0].shape[0],) + node.layer.input_shape)
        return join_inputs(node.layer, xs, out)

    def split(self, node, dx):
        return split_grad(node.layer, dx, node.layer.input_shapes)

    def gather(self, node, grads, copy):
        if len(grads) == 1:
            return grads[0]
        total = self._buffer((copy, node.name, "dy"), grads[0].shape)
        np.add(grads[0], grads[1], out=total)
        for g in grads[2:]:
            total += g
        return total

    def forward(self, node, x, train, seed):
        # seed: the pass's draw key (layers.draw_key), a random layer's `rng`
        return node.layer.forward(x, self.layer_params(node), train=train, rng=seed)

    def backward(self, node, dy, need_dx):
        return node.layer.backward(dy, self.layer_params(node), need_dx=need_dx)

    def update_state(self, node):
        node.layer.update_state(self.layer_state(node))

    def cost(self, node, labels):
        loss, dx = node.layer.cost(labels)
        return float(loss), dx

    def scale(self, node, dy, weight):
        return dy * np.float32(weight)

    # ---- guards -----------------------------------------------------------------
    def all_finite(self, a):
        return finite.all_finite(a)

    def first_nonfinite(self, arrays):
        for key, a in arrays.items():
            if not finite.all_finite(a):
                return key
        return None

    def room(self, held):
        return memory.available(held)

    def held_bytes(self, copies):
        held = sum(a.nbytes for a in self.params.values()) + sum(a.nbytes for a in self.state.values())
        held += sum(b.nbytes for nodes in copies for node in nodes for b in node.layer._buffers.values())
        return held + sum(b.nbytes for b in self._scratch.values())

    # ---- optimizer --------------------------------------------------------------
    def update(self, optimizer, key, arrays, scalars):
        flat = [np.ascontiguousarray(a, np.float32).reshape(-1) for a in arrays]
        # small parameters (LeNet-5: 8 of its 10) run the serial twin: threads.small
        optimizer.cpu_kernel(*flat, *(np.float32(s) for s in scalars))

    # ---- timing -----------------------------------------------------------------
    def clock_start(self, node):
        if self._clock_overhead is None:         # two clock reads, taken off every region
            empty = []
            for _ in range(2000):
                t = time.perf_counter()
                empty.append(time.perf_counter() - t)
            self._clock_overhead = float(np.median(empty))
        return time.perf_counter()

    def clock_stop(self, token, node):
        return max(0.0, time.perf_counter() - token - self._clock_overhead)

    def timing_note(self):
        """What the time verb's per-layer rows mean here."""
        mode = self._mode()
        if mode == "columns":
            return ("CPU threading: columns. Each layer row is that layer on one core (serial kernels, "
                    "one BLAS thread), as its column's thread runs it; the whole step below runs the "
                    "columns at once")
        if mode == "batch":
            return ("CPU threading: batch. Each layer row is that layer on one core (serial kernels, "
                    "one BLAS thread) for the whole batch; the whole step below runs each half of the "
                    "batch on its own thread")
        return None

    def end_step(self):
        pass

    # ---- helpers ----------------------------------------------------------------
    def _mode(self):
        return self.net.threading_mode if self.net is not None else "layers"

    def _buffer(self, key, shape):
        buf = self._scratch.get(key)
        if buf is None or buf.shape != shape:
            buf = self._scratch[key] = np.empty(shape, np.float32)
        return buf
