"""`Net`: a built graph with its parameters, run forward and backward by the executor on a backend."""
import os

import numpy as np

from engine import columns, devices, graph, memory
from engine.config import INPUT_NAME, parse_checkpoint_net, parse_net
from engine.cpu_backend import CpuBackend
from engine.errors import ConfigError
from engine.executor import Executor


class Net:
    """A network built from a net file.

    Parameters live in `state_dict()` order, keyed "<layer>.weight" / "<layer>.bias".
    Activations and scratch buffers are kept inside the layers between calls and reused
    while the batch size stays the same.
    """

    preprocess = None     # input preparation stored with a checkpoint (see engine.load)
    class_names = None
    data_spec = None

    def __init__(self, spec, seed=0):
        self.spec = spec
        self.name = spec.name
        self.input_shape = tuple(spec.input_shape)
        self._nodes = graph.build(spec)
        memory.check_load(spec, self._nodes)     # before any parameter is allocated
        self.seed = seed
        init_rng = np.random.default_rng(seed)
        self._params = {}          # "<layer>.<param>" -> float32 array
        self._layer_params = {}    # layer -> {param: the same arrays}
        for node in self._nodes:
            lp = node.layer.init_params(init_rng)
            self._layer_params[node.name] = lp
            for pname, arr in lp.items():
                self._params[f"{node.name}.{pname}"] = arr
        # dropout and other training-time randomness; the trainer saves and restores its state
        self.rng = np.random.default_rng([seed, 1])
        self.threading = "auto"
        self._use(CpuBackend(self))

    def _use(self, backend):
        """Run on `backend` from now on: one executor over it (a split batch's second copy
        of the layers is built when first needed)."""
        self.backend = backend
        self._executor = Executor(self._nodes, backend, make_copy=lambda: graph.build(self.spec))
        self._memory_ok = {}       # (batch, train, limit) -> bytes needed, once it fitted

    @property
    def executor(self):
        """The graph walk over this net's backend (engine.executor): for tools that rerun
        part of a pass (check-grads) or hook into one."""
        return self._executor

    # ---- threads ------------------------------------------------------------
    @property
    def threading(self):
        """How the CPU runs the layers: "columns" (the two columns on two threads at once),
        "batch" (each half of a batch of 8 or more on its own thread, through its own copy
        of the layers), "layers" (one layer after another, each kernel on every core) or
        "auto" (on two cores or more: columns where the net has two balanced columns, else
        batch; ENGINE_THREADING overrides auto). See engine.columns."""
        return self._threading

    @threading.setter
    def threading(self, mode):
        self._threading = columns.check_mode(mode)
        self._lane_mode, self.threading_reason = columns.choose(self._nodes, mode)

    @property
    def threading_mode(self):
        """What `threading` resolved to for this net: "columns", "batch" or "layers" (see
        threading_reason)."""
        return self._lane_mode

    # ---- device -------------------------------------------------------------
    @property
    def device(self):
        """"cpu" or "cuda": the kind of `backend` the net runs on."""
        return self.backend.kind

    def to(self, device, streams=None):
        """Move the net to "cpu", "cuda" or "auto" (CUDA when available); returns the net.

        On CUDA the parameters live on the device, each column's layers run on a stream
        of their own (`streams` sets how many: the columns share them round-robin);
        state_dict() and load_state_dict() work the same on both."""
        device = devices.resolve(device)
        if device == self.device and streams is None:
            return self
        self.backend.pull(self._params)
        self._use(devices.backend_for(device, self, streams=streams))
        return self

    # ---- structure ----------------------------------------------------------
    @property
    def layers(self):
        """The layers in execution order (each with .name, .type, .gpu, .inputs, .output_shape)."""
        return list(self._nodes)

    @property
    def output_layer(self):
        return self._nodes[-1]

    @property
    def classifies(self):
        """True when the output is class probabilities (a softmax), so top-k errors apply."""
        return bool(self.output_layer.layer.classifies)

    @property
    def num_classes(self):
        return int(np.prod(self.output_layer.output_shape))

    @property
    def num_params(self):
        return int(sum(a.size for a in self._params.values()))

    def layer(self, name):
        for node in self._nodes:
            if node.name == name:
                return node
        raise KeyError(f"no layer named {name!r}; layers: {', '.join(n.name for n in self._nodes)}")

    def summary(self, batch=128):
        """A table: layer, type, column, output shape, parameters, multiply-adds; totals;
        then the memory a training step needs, by kind, for one image and for `batch`."""
        rows = [("layer", "type", "gpu", "inputs", "output", "params", "MACs/img")]
        rows.append(("data", "input", "-", "-", "x".join(map(str, self.input_shape)), "0", "0"))
        total_macs = 0
        for node in self._nodes:
            n_par = memory.param_bytes(node.layer) // memory.FLOAT
            macs = int(node.layer.macs())
            total_macs += macs
            rows.append((node.name, node.type, str(node.gpu), ",".join(node.inputs),
                         "x".join(map(str, node.output_shape)), f"{n_par:,}", f"{macs:,}"))
        rows.append(("total", "", "", "", "", f"{self.num_params:,}", f"{total_macs:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        right = {5, 6}

        def fmt(r):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        rule = "-" * len(fmt(rows[0]))
        lines = [f"net '{self.name}': {len(self._nodes)} layers, {self.num_params:,} parameters, "
                 f"{total_macs / 1e6:,.1f} M multiply-adds per image", rule, fmt(rows[0]), rule]
        lines += [fmt(r) for r in rows[1:-1]] + [rule, fmt(rows[-1]),
                                                  f"CPU threading: {self._lane_mode} ({self.threading_reason})", ""]
        lines += memory.table(self._nodes, self.input_shape, batch)
        return "\n".join(lines)

    def __repr__(self):
        return f"<Net '{self.name}': {len(self._nodes)} layers, {self.num_params:,} parameters>"

    # ---- parameters ---------------------------------------------------------
    def state_dict(self):
        """{"<layer>.weight": array, "<layer>.bias": array} (host copies, on any device)."""
        self.backend.pull(self._params)
        return {k: v.copy() for k, v in self._params.items()}

    def parameters(self):
        """The host parameter arrays: on the CPU the live ones (the optimizer updates them in
        place); on CUDA copies, refreshed by state_dict() (`backend.params` are the live ones)."""
        return self._params

    def load_state_dict(self, state):
        missing = [k for k in self._params if k not in state]
        unexpected = [k for k in state if k not in self._params]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected " + ", ".join(unexpected))
            raise KeyError(f"state dict does not fit net '{self.name}': " + "; ".join(parts))
        for k, arr in self._params.items():
            new = np.asarray(state[k])
            if new.shape != arr.shape:
                raise ValueError(f"state dict key '{k}': shape {list(new.shape)} does not fit the "
                                 f"net's {list(arr.shape)}")
            arr[...] = new.astype(np.float32, copy=False)
        self.backend.push(self._params)

    # ---- compute ------------------------------------------------------------
    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise ValueError(f"input must be a NumPy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ValueError(f"input must be float32, got {x.dtype} (use x.astype(np.float32))")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must have shape [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        return np.ascontiguousarray(x)

    def check_memory(self, n, train=True):
        """Bytes a batch of n needs (a training step with `train`, else a forward pass), or
        MemoryLimitError saying how much the device has and the largest batch that fits.

        A verdict that fits is kept per batch size, so only a new size pays for the check."""
        key = (int(n), bool(train), os.environ.get(memory.ENV))
        if key not in self._memory_ok:
            held = self.backend.held_bytes(self._executor.copies)
            self._memory_ok[key] = memory.check_batch(self.name, self._nodes, self.input_shape, key[0], key[1],
                                                      held, self.backend.split_from, room=self.backend.room(held))
        return self._memory_ok[key]

    def _run(self, x, labels, train, backward, watch=None, timer=None):
        """Check x (and labels), refuse a batch that cannot fit before anything is allocated,
        then run the executor: returns its parts [(copy, start, stop, acts)] and, with
        `backward`, (loss, gradients) on the backend."""
        x = self.check_input(x)
        n = x.shape[0]
        self.check_memory(n, train or backward)
        if backward:
            labels = self._cost_layer().check_labels(labels, n=n)   # the device cannot say why
        xd, ld = self.backend.input(x, labels if backward else None)
        out = self._executor.step(xd, ld, train, self.draw_layer_seeds, backward, watch, timer)
        self.backend.end_step()
        return out

    def draw_layer_seeds(self, nodes=None):
        """{layer: seed} for one training pass of the random layers (dropout), drawn from
        `rng` in graph order: each such layer draws from its own generator seeded so, on
        every backend, so its draws do not depend on which lane runs first."""
        return {node.name: int(self.rng.integers(2**63))
                for node in (nodes or self._nodes) if node.layer.uses_rng}

    def forward(self, x, train=False, outputs=None, timer=None):
        """Run the net on x [N, C, H, W] float32.

        Returns the last layer's output (probabilities for a softmax net), or with
        `outputs=[names]` a dict name -> activation (host copies; "data" is allowed).
        `timer` (a dict) collects each layer's time (the time verb; engine.executor).
        """
        if outputs is not None:
            unknown = [o for o in outputs if o != INPUT_NAME and o not in {n.name for n in self._nodes}]
            if unknown:
                raise KeyError(f"unknown layer(s) {', '.join(unknown)}")
        parts, _ = self._run(x, None, train, backward=False, timer=timer)
        names = [self._nodes[-1].name] if outputs is None else outputs
        host = self.backend.to_host
        merged = {o: np.concatenate([host(acts[o]) for _, _, _, acts in parts]) if len(parts) > 1
                  else host(parts[0][3][o]) for o in names}
        return merged[names[0]] if outputs is None else merged

    def gradients(self, x, labels, train=False):
        """(mean cross-entropy, {"<layer>.<param>": gradient}) for a batch.

        Gradient arrays are host copies; `train=True` applies dropout (drawing from `self.rng`).
        """
        loss, grads = self.loss_and_grads(x, labels, train)
        return loss, {k: self.backend.to_host(g) for k, g in grads.items()}

    def loss(self, x, labels):
        """The cost of a batch at test time (no dropout, no backward)."""
        parts, _ = self._run(x, None, False, backward=False)
        n = parts[-1][2]
        labels = self._cost_layer().check_labels(labels, n=n)
        backend, copies = self.backend, self._executor.copies
        total = 0.0
        for c, a, b, _ in parts:
            out = copies[c][-1]
            part = None if labels is None else labels[a:b]
            loss, _ = backend.cost(out, backend.labels(part))
            total += backend.value(loss) * (b - a)
        return total / n

    def _cost_layer(self):
        out = self._nodes[-1]
        if not out.layer.is_cost:
            raise ValueError(f"net '{self.name}' ends in a {out.type} layer, not a cost layer "
                             "(softmax): it has no loss to differentiate")
        return out.layer

    def loss_and_grads(self, x, labels, train=True, watch=None, timer=None):
        """(mean loss, {"<layer>.<param>": gradient}) with the gradients on the net's backend
        (they may be the layers' reused buffers: the optimizer reads them in place).

        `watch(kind, layer, array)`, when given, sees every layer's "output" in forward
        order, then "cost", then each layer's "input gradient" and "<param> gradient" in
        backward order (engine.finite uses it to find where a NaN was born); `timer` (a
        dict) collects each layer's times (the time verb). See engine.executor."""
        _, (loss, grads) = self._run(x, labels, train, backward=True, watch=watch, timer=timer)
        return self.backend.value(loss), grads

    def predict(self, images, top=None):
        """Class probabilities for raw images, prepared as in training.

        images: uint8 or float, [N, H, W] (one channel) or [N, H, W, C], any size at least the
        input; the stored preparation (scaling, mean, centre crop) is applied. Returns
        [N, classes] probabilities, or with `top=k` a list per image of (class, probability)
        pairs, best first (class names where the training data had them).
        """
        if self.preprocess is None:
            raise ValueError("predict() needs the input preparation stored with a checkpoint: "
                             "load the net with engine.load(NET, checkpoint=RUN_FOLDER), or call "
                             "forward() with prepared float32 [N, C, H, W] input")
        from engine.datasets.augment import prepare_images
        x = prepare_images(images, self.input_shape, self.preprocess.mean, self.preprocess.scale)
        probs = self.forward(x)
        if top is None:
            return probs
        names = self.class_names or [str(i) for i in range(probs.shape[1])]
        order = np.argsort(-probs, axis=1)[:, :top]
        return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def load(source=None, seed=0, checkpoint=None, device="cpu", threading="auto", plugins=False):
    """Build a Net from a path to a .yaml file, YAML text, or a dict.

    Weights are drawn from each layer's init keys with a generator seeded by `seed`.
    With `checkpoint` (a run folder, meaning its latest checkpoint, or one checkpoint
    file) the trained weights and the stored input preparation are loaded too, and
    `source` may be None to use the net text saved in the checkpoint.
    `device` is "cpu", "cuda" or "auto" (CUDA when a device is available).
    `threading` is how the CPU runs the layers: "auto", "columns", "batch" or "layers"
    (Net.threading).
    Any problem in the definition raises `engine.ConfigError` (file, line, layer, key).
    """
    if checkpoint is None:
        if source is None:
            raise ConfigError("engine.load needs a net (a .yaml path, YAML text or a dict) or a checkpoint")
        net = Net(parse_net(source, plugins=plugins), seed=seed)
        net.threading = threading
        return net.to(device)
    from engine import checkpoint as ckpt
    from engine.datasets.augment import Preprocess
    arrays, meta = ckpt.load(checkpoint)
    spec = parse_net(source, plugins=plugins) if source is not None else parse_checkpoint_net(meta, plugins)
    net = Net(spec, seed=seed)
    net.threading = threading
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        net.load_state_dict(params)
    except (KeyError, ValueError) as e:
        raise ckpt.CheckpointError(f"{meta['path']}: does not fit net '{net.name}': {e}") from None
    net.preprocess = Preprocess.from_json(meta["preprocess"], arrays["mean"])
    net.class_names = meta.get("class_names")
    net.data_spec = meta.get("settings", {}).get("data")
    net.checkpoint_meta = meta
    return net.to(device)
