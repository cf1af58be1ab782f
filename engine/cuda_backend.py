"""The CUDA backend: device arrays, the layers' CUDA kernels, a stream per column.

Imported only when a net is moved to CUDA. It implements the interface described in
engine.cpu_backend. Weights, optimizer state, activations and gradients stay on the
device; one host->device copy per batch (from a pinned buffer, on its own stream) and
one read back per training step (the loss and the non-finite flags, before the update).
A layer runs on the stream of its column (`gpu: k`); a layer reading another stream's
output first waits on the event recorded after that output, so the columns overlap
wherever the graph allows, forward and backward.

A layer type without CUDA kernels (a plugin's NumPy layer) runs on the host: its input
is copied over, its NumPy forward/backward run, the results are copied back.

Layer state (Layer.state_shapes) lives on the device beside the parameters (`state`, which
no optimizer sees); a layer's CUDA side receives it among `params` and, for a layer with
state, implements `update_state(state, stream)`, called after a training step's forward.
"""
import contextlib
import importlib
import math
import sys

import numpy as np
from numba import cuda

from layers import cudabase

from engine import memory
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
def flag_nonfinite(a, flags, slot):
    """flags[slot] = 1 when a holds a NaN or an Inf."""
    i = cuda.grid(1)
    if i < a.size and not math.isfinite(a[i]):
        flags[slot] = 1


@cuda.jit
def scale_into(a, x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i]


KERNELS = [(flag_nonfinite, "void(float32[::1], int32[::1], int64)"),
           (scale_into, "void(float32, float32[::1], float32[::1])")]


class HostLayer(cudabase.CudaLayer):
    """A layer without CUDA kernels, run by its NumPy code on the host."""

    noticed = set()

    def __init__(self, layer):
        super().__init__(layer)
        if layer.type not in HostLayer.noticed:
            HostLayer.noticed.add(layer.type)
            print(f"note: layer type '{layer.type}' has no CUDA kernels; its layers run on the host "
                  "(copied to and from the device at each use)", file=sys.stderr)

    def _to_device(self, tag, a, stream):
        out = self.buffer(tag, a.shape)
        out.copy_to_device(np.ascontiguousarray(a, np.float32), stream=stream)
        return out

    def _host(self, arrays, stream):
        out = [a.copy_to_host(stream=stream) for a in arrays]
        stream.synchronize()
        return out

    def forward(self, x, params, train, seed, stream):
        xs = x if isinstance(x, list) else [x]
        keys = list(params)
        host = self._host(list(xs) + [params[k] for k in keys], stream)
        xh, ph = host[:len(xs)], dict(zip(keys, host[len(xs):]))
        rng = seed if self.layer.uses_rng and train else None     # the draw key, as on the CPU
        y = self.layer.forward(xh if isinstance(x, list) else xh[0], ph, train=train, rng=rng)
        out = self._to_device("y", y, stream)
        stream.synchronize()       # the layer may reuse its host buffers at the next call
        return out

    def update_state(self, state, stream):
        keys = list(state)
        host = dict(zip(keys, self._host([state[k] for k in keys], stream)))
        self.layer.update_state(host)
        for k in keys:
            state[k].copy_to_device(np.ascontiguousarray(host[k], np.float32), stream=stream)
        stream.synchronize()

    def backward(self, dy, params, need_dx, stream):
        keys = list(params)
        host = self._host([dy] + [params[k] for k in keys], stream)
        dx, grads = self.layer.backward(host[0], dict(zip(keys, host[1:])), need_dx=need_dx)
        if need_dx:
            dx = ([self._to_device(f"dx{i}", d, stream) for i, d in enumerate(dx)] if isinstance(dx, list)
                  else self._to_device("dx", dx, stream))
        grads = {k: self._to_device(f"g_{k}", g, stream) for k, g in grads.items()}
        stream.synchronize()
        return (dx if need_dx else None), grads

    def cost(self, labels, stream):
        host = None if labels is None else self._host([labels], stream)[0]
        loss, dx = self.layer.cost(host)
        out = (self._to_device("loss", np.asarray([loss], np.float32), stream),
               self._to_device("dx", dx, stream))
        stream.synchronize()
        return out


def _impl_for(layer):
    package = importlib.import_module(type(layer).__module__)
    if hasattr(package, "__path__"):         # a layer folder: its CUDA kernels in cuda.py
        try:
            module = importlib.import_module(package.__name__ + ".cuda")
        except ModuleNotFoundError as e:
            if e.name != package.__name__ + ".cuda":
                raise
        else:
            return module.make(layer)
    return HostLayer(layer)


class CudaBackend:
    kind = "cuda"
    split_from = None          # one device: a batch runs whole

    def __init__(self, net, streams=None):
        if not available():
            raise DeviceError("no CUDA device is available (numba.cuda.is_available() is False); "
                              "use the CPU, or install the driver and `pip install -e .[gpu]`")
        self.net = net
        columns = sorted({node.gpu for node in net.layers})
        n_streams = len(columns) if streams is None else max(1, int(streams))
        self.streams = [cuda.stream() for _ in range(n_streams)]
        self._lane = {gpu: i % n_streams for i, gpu in enumerate(columns)}
        self.upload_stream = cuda.stream()
        self.params = {k: cuda.to_device(v) for k, v in net.parameters().items()}
        self.state = {k: cuda.to_device(v) for k, v in net.layer_state().items()}   # no optimizer sees it
        self._layer_state = {n.name: {s: self.state[f"{n.name}.{s}"] for s in n.layer.state_shapes()}
                             for n in net.layers}
        self._layer_params = {n.name: dict({p: self.params[f"{n.name}.{p}"] for p in n.layer.param_shapes()},
                                           **self._layer_state[n.name])
                              for n in net.layers}
        self._owner = {f"{n.name}.{p}": n for n in net.layers for p in n.layer.param_shapes()}
        self.impls = {}
        self._pinned, self._inputs, self._labels = {}, {}, {}
        self._slot = 1
        self._slot_readers = {}
        self._events = {}
        self._kernels = {}

    # ---- placement --------------------------------------------------------------
    def lane_of(self, node):
        return self._lane[node.gpu]

    def stream_of(self, node):
        return self.streams[self._lane[node.gpu]]

    def impl(self, node):
        impl = self.impls.get(id(node.layer))
        if impl is None:
            impl = self.impls[id(node.layer)] = _impl_for(node.layer)
        return impl

    def _record(self, name, stream):
        ev = make_event()
        ev.record(stream)
        self._events[name] = ev, stream

    def run(self, order, lane_of, waits_for, work):
        """Issue every node's work in order, each on its column's stream; a node's stream
        first waits on the events of the names it waits for that another stream recorded."""
        for node in order:
            stream = self.stream_of(node)
            for name in waits_for(node):
                ev, on = self._events.get(name, (None, stream))   # arrays given directly: none
                if on is not stream:
                    ev.wait(stream)
            work(node)
            self._record(node.name, stream)

    def run_halves(self, first, second):
        first()
        second()

    def one_lane(self):
        return contextlib.nullcontext()

    # ---- arrays -----------------------------------------------------------------
    def layer_params(self, node):
        return self._layer_params.get(node.name, {})

    def layer_state(self, node):
        return self._layer_state.get(node.name, {})

    def input(self, x, labels=None):
        """Copy a batch to the device through pinned buffers, asynchronously on the upload
        stream. Two slots alternate, so the host fills one while the device still computes
        on the other (the previous batch): the copy into a slot waits for the compute that
        last read it, and the host waits only for the copy that last used its pinned buffer."""
        x = np.ascontiguousarray(x, np.float32)
        self._slot = slot = 1 - self._slot
        key = (slot, x.shape)
        if key not in self._pinned:
            self._pinned[key] = cuda.pinned_array(x.shape, np.float32)
            self._inputs[key] = cuda.device_array(x.shape, np.float32)
        pinned, dev = self._pinned[key], self._inputs[key]
        copied = self._events.get(f"copied{slot}")
        if copied is not None:
            copied[0].synchronize()            # the pinned buffer's last copy is done
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

    def end_step(self):
        """Events on every compute stream, which the next copy into the same slot waits for."""
        readers = []
        for stream in self.streams:
            ev = make_event()
            ev.record(stream)
            readers.append(ev)
        self._slot_readers[self._slot] = readers

    def labels(self, labels):
        return None if labels is None else cuda.to_device(np.ascontiguousarray(labels, np.int32))

    def to_host(self, a):
        return a.copy_to_host()

    def zeros(self, shape):
        out = cuda.device_array(shape, np.float32)
        out.copy_to_device(np.zeros(shape, np.float32))
        return out

    def _device(self, key):
        dev = self.params.get(key)
        return self.state[key] if dev is None else dev

    def pull(self, host_params):
        """Copy the device parameters (and layer state) into the host arrays of those keys."""
        cuda.synchronize()
        for k, arr in host_params.items():
            self._device(k).copy_to_host(arr)

    def push(self, host_params):
        cuda.synchronize()
        for k, arr in host_params.items():
            self._device(k).copy_to_device(np.ascontiguousarray(arr, np.float32))

    def synchronize(self):
        cuda.synchronize()

    def value(self, loss):
        value = float(loss.copy_to_host()[0])
        return value if math.isfinite(value) else float("nan")

    def loss_array(self, loss):
        return loss

    def copy_of(self, a):
        out = cuda.device_array(a.shape, np.float32)
        out.copy_to_device(a)
        return out

    def add_into(self, dst, src):
        cudabase.add_into(dst, src, 0)

    def combine_losses(self, parts):
        raise DeviceError("the CUDA backend runs a batch whole")   # split_from is None

    # ---- layers -----------------------------------------------------------------
    def join(self, node, xs, copy):
        return cudabase.join_inputs(self.impl(node), xs, self.stream_of(node))

    def split(self, node, dx):
        stream = self.stream_of(node)
        parts = cudabase.split_grad(self.impl(node), dx, stream)
        self._record(node.name, stream)        # the cost's gradient is split outside `run`
        return parts

    def gather(self, node, grads, copy):
        if len(grads) == 1:
            return grads[0]
        stream = self.stream_of(node)
        acc = self.impl(node).buffer("dy_sum", grads[0].shape)
        acc.copy_to_device(grads[0], stream=stream)
        for g in grads[1:]:
            cudabase.add_into(acc, g, stream)
        return acc

    def forward(self, node, x, train, seed):
        seed = 0 if seed is None else seed       # the pass's draw key (layers.draw_key)
        return self.impl(node).forward(x, self.layer_params(node), train, seed, self.stream_of(node))

    def backward(self, node, dy, need_dx):
        return self.impl(node).backward(dy, self.layer_params(node), need_dx, self.stream_of(node))

    def update_state(self, node):
        self.impl(node).update_state(self.layer_state(node), self.stream_of(node))

    def cost(self, node, labels):
        return self.impl(node).cost(labels, self.stream_of(node))

    def scale(self, node, dy, weight):
        out = self.impl(node).buffer("dy_scaled", dy.shape)
        flat = out.reshape(-1)
        scale_into[cudabase.blocks_for(flat.size), cudabase.BLOCK, self.stream_of(node)](
            np.float32(weight), dy.reshape(-1), flat)
        return out

    # ---- guards -----------------------------------------------------------------
    def first_nonfinite(self, arrays):
        """The first key whose array holds a NaN or an Inf (one flag kernel per array on its
        layer's stream, then one read of all the flags), or None."""
        keys = list(arrays)
        flags = self._flags(len(keys))
        for slot, key in enumerate(keys):
            a = arrays[key].reshape(-1)
            node = self._owner.get(key)
            stream = self.stream_of(node) if node is not None else 0
            flag_nonfinite[cudabase.blocks_for(a.size), cudabase.BLOCK, stream](a, flags, slot)
        cuda.synchronize()
        bad = np.flatnonzero(flags.copy_to_host())
        return keys[bad[0]] if bad.size else None

    def all_finite(self, a):
        return self.first_nonfinite({"": a}) is None

    def _flags(self, n):
        flags = cuda.device_array(max(n, 1), np.int32)
        flags.copy_to_device(np.zeros(max(n, 1), np.int32))
        return flags

    def room(self, held):
        """The device's free memory plus what the net holds, capped like the host's
        (ENGINE_MEMORY_LIMIT)."""
        free, _ = cuda.current_context().get_memory_info()
        found = None if math.isinf(free) else int(free) + held     # the simulator knows no limit
        return memory.capped(found, None if found is None else "free memory of the CUDA device")

    def held_bytes(self, copies):
        held = sum(a.nbytes for a in self.params.values()) + sum(a.nbytes for a in self.state.values())
        return held + sum(b.nbytes for impl in self.impls.values() for b in impl._buffers.values())

    # ---- optimizer --------------------------------------------------------------
    def update(self, optimizer, key, arrays, scalars):
        kernel = self._kernels.get(type(optimizer))
        if kernel is None:
            module, name = optimizer.cuda_kernel.split(":")
            kernel = self._kernels[type(optimizer)] = getattr(importlib.import_module(module), name)
        flat = [a.reshape(-1) for a in arrays]
        kernel[cudabase.blocks_for(flat[0].size), cudabase.BLOCK, self.stream_of(self._owner[key])](
            *flat, *(np.float32(s) for s in scalars))

    # ---- timing -----------------------------------------------------------------
    def timing_note(self):
        return ("CUDA: per-layer times are CUDA events with a synchronisation after every layer "
                "(columns serialised); the whole step below lets the streams overlap")

    def clock_start(self, node):
        """CUDA events around a layer, with a synchronisation after it (benchmarks only)."""
        start = cuda.event(timing=True)      # the simulator's events take no flag: TypeError
        start.record(self.stream_of(node))
        return start

    def clock_stop(self, start, node):
        end = cuda.event(timing=True)
        end.record(self.stream_of(node))
        end.synchronize()
        return cuda.event_elapsed_time(start, end) / 1e3
