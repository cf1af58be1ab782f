"""Running a Net on a CUDA device: the two columns on two streams.

Imported only when a net is moved to CUDA. Weights, momentum, activations and gradients
stay on the device; one host->device copy per batch (from a pinned buffer, on its own
stream) and one scalar back (the loss). A layer with `gpu: 0` runs on stream 0 and
`gpu: 1` on stream 1; a layer reading another stream's output first waits on the event
recorded after that output, so the columns overlap wherever the graph allows — forward,
and backward, where each layer's SGD update follows its gradient on its own stream.
"""
import importlib
import math

import numpy as np
from numba import cuda

from layers import cudabase

from engine.config import INPUT_NAME
from engine.errors import DeviceError


def available():
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def make_event():
    # the simulator's Event takes no arguments (numba.md); timing is only for benchmarks
    return cuda.event()


@cuda.jit
def sgd_update(w, v, g, lr, momentum, decay):
    """v = m v - decay lr w - lr g; w += v (the paper's rule), one thread per element."""
    i = cuda.grid(1)
    if i < w.size:
        vi = momentum * v[i] - decay * lr * w[i] - lr * g[i]
        v[i] = vi
        w[i] += vi


KERNELS = [(sgd_update, "void(float32[::1], float32[::1], float32[::1], float32, float32, float32)")]


def _impl_for(layer):
    module = importlib.import_module(type(layer).__module__ + ".cuda")
    return module.make(layer)


class CudaBackend:
    def __init__(self, net, streams=2):
        if not available():
            raise DeviceError("no CUDA device is available (numba.cuda.is_available() is False); "
                              "use device='cpu', or install the driver and `pip install -e .[gpu]`")
        self.net = net
        self.nodes = net.layers
        self.impls = {n.name: _impl_for(n.layer) for n in self.nodes}
        n_streams = max(1, int(streams))
        self.streams = [cuda.stream() for _ in range(n_streams)]
        self.upload_stream = cuda.stream()
        self.params = {k: cuda.to_device(v) for k, v in net.parameters().items()}
        self.layer_params = {n.name: {p: self.params[f"{n.name}.{p}"] for p in n.layer.param_shapes()}
                             for n in self.nodes}
        self.velocity = None
        self.step = 0
        self.timings = None    # a dict -> per-layer times in ms, {(name, "forward"|"backward"): [..]}
        self._pinned = {}
        self._inputs = {}
        self._labels = {}
        self._slot_readers = {}
        self._acts = {}
        self._events = {}

    # ---- placement --------------------------------------------------------------
    def stream_of(self, node):
        return self.streams[node.gpu % len(self.streams)]

    def _record(self, name, stream):
        ev = make_event()
        ev.record(stream)
        self._events[name] = ev
        return ev

    def _wait_for(self, names, stream):
        for name in names:
            self._events[name].wait(stream)

    # ---- host <-> device -----------------------------------------------------------
    def upload(self, x, labels=None):
        """Copy a batch to the device through pinned buffers, asynchronously on the upload
        stream. Two slots alternate, so the host fills one while the device still computes
        on the other (the previous batch): the copy into a slot waits for the compute that
        last read it, and the host waits only for the copy that last used its pinned buffer."""
        x = np.ascontiguousarray(x, np.float32)
        self._slot = slot = 1 - getattr(self, "_slot", 1)
        key = (slot, x.shape)
        if key not in self._pinned:
            self._pinned[key] = cuda.pinned_array(x.shape, np.float32)
            self._inputs[key] = cuda.device_array(x.shape, np.float32)
        pinned, dev = self._pinned[key], self._inputs[key]
        copied = self._events.get(f"copied{slot}")
        if copied is not None:
            copied.synchronize()               # the pinned buffer's last copy is done
        for ev in self._slot_readers.get(slot, ()):
            ev.wait(self.upload_stream)        # the device buffer's last readers are done
        pinned[...] = x
        dev.copy_to_device(pinned, stream=self.upload_stream)
        dev_labels = None
        if labels is not None:
            lab = np.ascontiguousarray(labels, np.int32)
            lkey = (slot, lab.shape)
            if lkey not in self._labels:
                self._labels[lkey] = (cuda.pinned_array(lab.shape, np.int32),
                                      cuda.device_array(lab.shape, np.int32))
            pinned_lab, dev_labels = self._labels[lkey]
            pinned_lab[...] = lab
            dev_labels.copy_to_device(pinned_lab, stream=self.upload_stream)
        self._record(f"copied{slot}", self.upload_stream)
        self._record(INPUT_NAME, self.upload_stream)
        return dev, dev_labels

    def mark_input_read(self):
        """After a step: events on every compute stream, which the next copy into the same
        slot waits for."""
        readers = []
        for stream in self.streams:
            ev = make_event()
            ev.record(stream)
            readers.append(ev)
        self._slot_readers[getattr(self, "_slot", 0)] = readers

    def fetch_loss(self, loss_dev):
        """Start copying the (1,) loss to the host; returns a PendingLoss to read later."""
        stream = self.stream_of(self.nodes[-1])
        host = cuda.pinned_array(1, np.float32)
        loss_dev.copy_to_host(host, stream=stream)
        ev = make_event()
        ev.record(stream)
        self.mark_input_read()
        return PendingLoss(host, ev)

    def sync_to_host(self):
        """Copy the device parameters back into the Net's host arrays."""
        cuda.synchronize()
        for k, arr in self.net.parameters().items():
            self.params[k].copy_to_host(arr)

    def load_from_host(self):
        cuda.synchronize()
        for k, arr in self.net.parameters().items():
            self.params[k].copy_to_device(np.ascontiguousarray(arr))

    # ---- compute -------------------------------------------------------------------
    def forward(self, x_dev, train, step_seed=None):
        """Run every layer; dropout masks come from (net seed, step_seed or a step counter, layer)."""
        acts = {INPUT_NAME: x_dev}
        if train and step_seed is None:
            self.step += 1
            step_seed = self.step
        step_seed = step_seed or 0
        for index, node in enumerate(self.nodes):
            stream = self.stream_of(node)
            self._wait_for(node.inputs, stream)
            impl = self.impls[node.name]
            xin = cudabase.join_inputs(impl, [acts[i] for i in node.inputs], stream)
            seed = (self.net.seed * 1_000_003 + step_seed * 7919 + index) & 0x7FFFFFFF
            acts[node.name] = self._timed(node.name, "forward", stream, impl.forward, xin,
                                          self.layer_params[node.name], train, seed, stream)
            self._record(node.name, stream)
        self._acts = acts
        return acts

    def backward(self, labels_dev, lr=None, momentum=0.0, weight_decay=0.0, multipliers=None):
        """Gradients of the mean cost; with `lr` each layer's SGD update follows its gradient
        on its own stream. Returns (loss device array (1,), {key: device grad})."""
        out = self.nodes[-1]
        stream = self.stream_of(out)
        impl = self.impls[out.name]
        loss, dx = impl.cost(labels_dev, stream)
        contributions = {}     # producer -> [(device grad, event name)]
        self._hand_back(out, dx, stream, contributions)
        grads = {}
        for node in reversed(self.nodes[:-1]):
            stream = self.stream_of(node)
            parts = contributions.pop(node.name)
            self._wait_for([ev for _, ev in parts], stream)
            dy = parts[0][0]
            if len(parts) > 1:
                acc = self.impls[node.name].buffer("dy_sum", dy.shape)
                acc.copy_to_device(dy, stream=stream)
                for g, _ in parts[1:]:
                    cudabase.add_into(acc, g, stream)
                dy = acc
            need_dx = any(i != INPUT_NAME for i in node.inputs)
            dx, pgrads = self._timed(node.name, "backward", stream, self.impls[node.name].backward,
                                     dy, self.layer_params[node.name], need_dx, stream)
            for pname, g in pgrads.items():
                key = f"{node.name}.{pname}"
                grads[key] = g
                if lr is not None:
                    self._update(key, g, lr, momentum, weight_decay, multipliers or {}, stream)
            if need_dx:
                self._hand_back(node, dx, stream, contributions)
        return loss, grads

    def _timed(self, name, phase, stream, fn, *args):
        """fn(*args), timed with CUDA events when `self.timings` is a dict (benchmarks only:
        it synchronises after every layer)."""
        if self.timings is None:
            return fn(*args)
        start, end = cuda.event(timing=True), cuda.event(timing=True)
        start.record(stream)
        out = fn(*args)
        end.record(stream)
        end.synchronize()
        self.timings.setdefault((name, phase), []).append(cuda.event_elapsed_time(start, end))
        return out

    def _hand_back(self, node, dx, stream, contributions):
        parts = cudabase.split_grad(self.impls[node.name], dx, stream)
        self._record(f"{node.name}/dx", stream)
        for name, g in zip(node.inputs, parts):
            if name != INPUT_NAME:
                contributions.setdefault(name, []).append((g, f"{node.name}/dx"))

    def _update(self, key, g, lr, momentum, weight_decay, multipliers, stream):
        lr_mult, wd_mult = multipliers.get(key, (1.0, 1.0))
        if lr_mult == 0.0:
            return
        if self.velocity is None:
            self.velocity = {k: cuda.device_array_like(p) for k, p in self.params.items()}
            for v in self.velocity.values():
                v.copy_to_device(np.zeros(v.shape, np.float32))
        w, v = self.params[key].reshape(-1), self.velocity[key].reshape(-1)
        sgd_update[cudabase.blocks_for(w.size), cudabase.BLOCK, stream](
            w, v, g.reshape(-1), np.float32(lr * lr_mult), np.float32(momentum),
            np.float32(weight_decay * wd_mult))

    def output(self):
        return self._acts[self.nodes[-1].name]

    def velocity_to_host(self):
        cuda.synchronize()
        if self.velocity is None:
            return {k: np.zeros(p.shape, np.float32) for k, p in self.params.items()}
        return {k: v.copy_to_host() for k, v in self.velocity.items()}

    def velocity_from_host(self, arrays):
        self.velocity = {k: cuda.to_device(np.ascontiguousarray(arrays[k], np.float32))
                         for k in self.params}


class PendingLoss:
    """A batch's loss on its way to the host; `value()` waits for it."""

    def __init__(self, host, event):
        self.host, self.event = host, event

    def value(self):
        self.event.synchronize()
        value = float(self.host[0])
        return value if math.isfinite(value) else float("nan")
