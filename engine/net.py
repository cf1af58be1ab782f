"""`Net`: a built graph with its parameters, run forward and backward on the CPU."""
import os

import numpy as np

from layers.base import join_inputs, split_grad

from engine import columns, graph, memory
from engine.config import INPUT_NAME, parse_checkpoint_net, parse_net
from engine.errors import ConfigError, DeviceError


class Net:
    """A network built from a net file.

    Parameters live in `state_dict()` order, keyed "<layer>.weight" / "<layer>.bias".
    Activations and scratch buffers are kept inside the layers between calls and reused
    while the batch size stays the same.
    """

    preprocess = None     # input preparation stored with a checkpoint (see engine.load)
    class_names = None
    data_spec = None
    _backend = None       # a CudaBackend while the net lives on a CUDA device

    def __init__(self, spec, seed=0):
        self.spec = spec
        self.name = spec.name
        self.input_shape = tuple(spec.input_shape)
        self._nodes = graph.build(spec)
        memory.check_load(spec, self._nodes)     # before any parameter is allocated
        self._memory_ok = {}       # (batch, train, limit) -> bytes needed, once it fitted
        self._rank = {node.name: i for i, node in enumerate(self._nodes)}
        self._scratch_bufs = {}    # joined inputs and summed gradients, reused between steps
        self._replica = None       # threading "batch": the layers that run the second half
        self._readers = {node.name: [] for node in self._nodes}    # backward waits for these
        for node in self._nodes:
            for name in set(node.inputs) - {INPUT_NAME}:
                self._readers[name].append(node.name)
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

    def _lane_of(self, serial):
        """A layer's lane: its column with threading "columns", else the one lane."""
        if serial or self._lane_mode != "columns":
            return lambda node: 0
        return lambda node: node.gpu

    # ---- device -------------------------------------------------------------
    @property
    def device(self):
        return "cpu" if self._backend is None else "cuda"

    def to(self, device):
        """Move the net to "cpu", "cuda" or "auto" (CUDA when available); returns the net.

        On CUDA the parameters live on the device; state_dict() and load_state_dict()
        work the same on both."""
        device = resolve_device(device)
        if device == self.device:
            return self
        if device == "cpu":
            self._backend.sync_to_host()
            self._backend = None
        else:
            from engine.cuda_backend import CudaBackend
            self._backend = CudaBackend(self)
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
        if self._backend is not None:
            self._backend.sync_to_host()
        return {k: v.copy() for k, v in self._params.items()}

    def parameters(self):
        """The live host parameter arrays (updated in place by the CPU solver)."""
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
        if self._backend is not None:
            self._backend.load_from_host()

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
        MemoryLimitError saying how much is available and the largest batch that fits.

        A verdict that fits is kept per batch size, so only a new size pays for the check."""
        key = (int(n), bool(train), os.environ.get(memory.ENV))
        if key not in self._memory_ok:
            held = sum(a.nbytes for a in self._params.values())
            held += sum(b.nbytes for node in self._nodes + (self._replica or [])
                        for b in node.layer._buffers.values())
            held += sum(b.nbytes for b in self._scratch_bufs.values())
            self._memory_ok[key] = memory.check_batch(self.name, self._nodes, self.input_shape,
                                                      key[0], key[1], held, self._splits_from())
        return self._memory_ok[key]

    def _forward(self, x, train, watch=None, backward=False, checked=False):
        """Check x and the memory its batch needs (a training step if `train` or `backward`),
        then run every layer. Returns a list of (nodes, start, stop, {name: activation}):
        one entry, or with threading "batch" one per half of the batch, each run by its own
        copy of the layers on its own thread. The input is under "data"."""
        x = x if checked else self.check_input(x)
        n = x.shape[0]
        self.check_memory(n, train or backward)     # refused before anything is allocated
        if not self._splits(n, watch):
            rngs = self._draw_rngs(self._nodes, train)
            return [(self._nodes, 0, n, self._run_forward(self._nodes, 0, x, train, rngs, watch))]
        parts = self._halves(n)
        rngs = [self._draw_rngs(nodes, train) for nodes, _, _ in parts]
        acts = [None, None]

        def half(i):
            nodes, a, b = parts[i]
            acts[i] = self._run_forward(nodes, i, x[a:b], train, rngs[i])
        columns.run_pair(lambda: half(0), lambda: half(1))
        return [part + (act,) for part, act in zip(parts, acts)]

    def _splits_from(self):
        """The smallest batch that threading "batch" splits in two (None: never)."""
        return columns.MIN_SPLIT if self._lane_mode == "batch" else None

    def _splits(self, n, watch=None):
        # a watch sees the layers in graph order: one copy, one lane
        return self._lane_mode == "batch" and n >= columns.MIN_SPLIT and watch is None

    def _halves(self, n):
        """[(nodes, start, stop)] for the two halves of a batch of n."""
        if self._replica is None:          # a second copy of the layers: its own buffers
            self._replica = graph.build(self.spec)
        h = (n + 1) // 2
        return [(self._nodes, 0, h), (self._replica, h, n)]

    def draw_layer_seeds(self, nodes=None):
        """{layer: seed} for one training pass of the random layers (dropout), drawn from
        `rng` in graph order: each such layer draws from np.random.default_rng(seed), so
        its draws do not depend on which thread runs first."""
        return {node.name: int(self.rng.integers(2**63))
                for node in (nodes or self._nodes) if node.layer.uses_rng}

    def _draw_rngs(self, nodes, train):
        if not train:
            return {}
        return {name: np.random.default_rng(seed) for name, seed in self.draw_layer_seeds(nodes).items()}

    def _run_forward(self, nodes, copy, x, train, rngs, watch=None):
        acts = {INPUT_NAME: x}

        def run(node):
            xin = join_inputs(node.layer, [acts[i] for i in node.inputs], self._joined(node, copy, x.shape[0]))
            acts[node.name] = node.layer.forward(xin, self._layer_params[node.name], train=train,
                                                 rng=rngs.get(node.name))
            if watch is not None:
                watch("output", node.name, acts[node.name])

        columns.run(nodes, self._lane_of(copy or watch is not None), lambda node: node.inputs, run)
        return acts

    def forward(self, x, train=False, outputs=None):
        """Run the net on x [N, C, H, W] float32.

        Returns the last layer's output (probabilities for a softmax net), or with
        `outputs=[names]` a dict name -> activation (copies; "data" is allowed).
        """
        if outputs is not None:
            unknown = [o for o in outputs if o != INPUT_NAME and o not in {n.name for n in self._nodes}]
            if unknown:
                raise KeyError(f"unknown layer(s) {', '.join(unknown)}")
        if self._backend is not None:
            dev, _ = self._backend.upload(self.check_input(x))
            acts = self._backend.forward(dev, train)
            self._backend.mark_input_read()
            if outputs is None:
                return acts[self._nodes[-1].name].copy_to_host()
            return {o: acts[o].copy_to_host() for o in outputs}
        parts = self._forward(x, train)
        names = [self._nodes[-1].name] if outputs is None else outputs
        merged = {o: np.concatenate([acts[o] for _, _, _, acts in parts]) if len(parts) > 1
                  else parts[0][3][o].copy() for o in names}
        return merged[names[0]] if outputs is None else merged

    def gradients(self, x, labels, train=False):
        """(mean cross-entropy, {"<layer>.<param>": gradient}) for a batch.

        Gradient arrays are fresh copies; `train=True` applies dropout (drawing from `self.rng`).
        """
        if self._backend is not None:
            loss, grads = self.cuda_step(x, labels, train=train)
            return loss, {k: g.copy_to_host() for k, g in grads.items()}
        loss, grads = self.loss_and_grads(x, labels, train)
        return loss, {k: g.copy() for k, g in grads.items()}

    def cuda_step(self, x, labels, train=True, lr=None, momentum=0.0, weight_decay=0.0, multipliers=None,
                  step_seed=None, wait=True):
        """On CUDA: forward, cost, backward and (with `lr`) the SGD update of every layer,
        all on the device. Returns (mean loss, {key: device gradient}); with wait=False the
        loss is a PendingLoss, so the host can prepare the next batch while this one runs."""
        x = self.check_input(x)
        labels = self._cost_layer().check_labels(labels, n=x.shape[0])   # the device cannot say why
        dev, dev_labels = self._backend.upload(x, labels)
        self._backend.forward(dev, train, step_seed)
        loss, grads = self._backend.backward(dev_labels, lr, momentum, weight_decay, multipliers)
        pending = self._backend.fetch_loss(loss)
        return (pending.value() if wait else pending), grads

    def loss(self, x, labels):
        """The cost of a batch at test time (no dropout, no backward on the CPU)."""
        if self._backend is not None:
            return self.cuda_step(x, labels, train=False)[0]
        parts = self._forward(x, False)
        n = parts[-1][2]
        labels = self._cost_layer().check_labels(labels, n=n)
        return sum(float(nodes[-1].layer.cost(_rows(labels, a, b))[0]) * (b - a) for nodes, a, b, _ in parts) / n

    def _cost_layer(self):
        out = self._nodes[-1]
        if not out.layer.is_cost:
            raise ValueError(f"net '{self.name}' ends in a {out.type} layer, not a cost layer "
                             "(softmax): it has no loss to differentiate")
        return out.layer

    def loss_and_grads(self, x, labels, train=True, watch=None):
        """As `gradients`, but the arrays may be the layers' reused buffers (for the solver).

        `watch(kind, layer, array)`, when given, sees every layer's "output" in forward
        order, then "cost", then each layer's "input gradient" and "<param> gradient" in
        backward order (engine.finite uses it to find where a NaN was born)."""
        if self._backend is not None:
            raise ValueError("this net lives on CUDA: use gradients(), or cuda_step() for device arrays")
        cost_layer = self._cost_layer()
        labels = np.asarray(labels)
        x = self.check_input(x)
        n = x.shape[0]
        if not self._splits(n, watch):
            self._forward(x, train, watch, backward=True, checked=True)
            return self._run_backward(self._nodes, 0, labels, 1.0, watch)
        labels = cost_layer.check_labels(labels, n=n)   # about the whole batch, not a half
        self.check_memory(n, True)
        halves = self._halves(n)
        rngs = [self._draw_rngs(nodes, train) for nodes, _, _ in halves]
        results = [None, None]

        def half(i):          # forward and backward of one half on one thread, cache-warm
            nodes, a, b = halves[i]
            self._run_forward(nodes, i, x[a:b], train, rngs[i])
            results[i] = self._run_backward(nodes, i, _rows(labels, a, b), (b - a) / n)
        columns.run_pair(lambda: half(0), lambda: half(1))
        (loss0, grads), (loss1, grads1) = results
        for key, g in grads.items():         # the first half's buffers hold the sum
            g += grads1[key]
        (_, a0, b0), (_, a1, b1) = halves
        return (loss0 * (b0 - a0) + loss1 * (b1 - a1)) / n, grads

    def _run_backward(self, nodes, copy, labels, weight, watch=None):
        """Cost and backward through `nodes` (after their forward); `weight` scales the
        cost's gradient: a half of the batch carries its share of the mean."""
        out = nodes[-1]
        loss, dx = out.layer.cost(labels)
        if weight != 1.0:
            dx = dx * np.float32(weight)
        if watch is not None:
            watch("cost", out.name, np.asarray([loss], np.float32))
            watch("input gradient", out.name, dx)
        parts = {}          # producer -> [(reader, gradient part)], read back in a fixed order
        self._send_back(out, dx, parts)
        grads = {}

        def run(node):
            dy = self._gathered(node, copy, parts)
            need_dx = any(i != INPUT_NAME for i in node.inputs)
            dx, pgrads = node.layer.backward(dy, self._layer_params[node.name], need_dx=need_dx)
            for pname, g in pgrads.items():
                grads[f"{node.name}.{pname}"] = g
                if watch is not None:
                    watch(f"{pname} gradient", node.name, g)
            if need_dx:
                if watch is not None:
                    for part in (dx if isinstance(dx, list) else [dx]):   # "separate" inputs
                        watch("input gradient", node.name, part)
                self._send_back(node, dx, parts)

        order = list(reversed([n for n in nodes if n is not out]))
        columns.run(order, self._lane_of(copy or watch is not None), lambda node: self._readers[node.name], run)
        return float(loss), {k: grads[k] for k in self._params}

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

    @staticmethod
    def _send_back(node, dx, parts):
        for name, g in zip(node.inputs, split_grad(node.layer, dx, node.layer.input_shapes)):
            if name != INPUT_NAME:
                parts.setdefault(name, []).append((node.name, g))

    def _gathered(self, node, copy, parts):
        """The gradient of a layer's output: the sum of what its readers sent back, added
        in reverse graph order of the readers whichever thread finished first."""
        rank = self._rank
        got = sorted(parts.pop(node.name), key=lambda p: -rank[p[0]])
        if len(got) == 1:
            return got[0][1]
        total = self._scratch((copy, node.name, "dy"), got[0][1].shape)
        np.add(got[0][1], got[1][1], out=total)
        for _, g in got[2:]:
            total += g
        return total

    def _joined(self, node, copy, n):
        """The reused array a layer's several inputs are joined into (None for one input)."""
        if len(node.inputs) < 2 or node.layer.join == "separate":
            return None
        return self._scratch((copy, node.name, "join"), (n,) + node.layer.input_shape)

    def _scratch(self, key, shape):
        buf = self._scratch_bufs.get(key)
        if buf is None or buf.shape != shape:
            buf = self._scratch_bufs[key] = np.empty(shape, np.float32)
        return buf


def _rows(labels, a, b):
    """A half's labels (None stays None: a cost such as sum2 takes none)."""
    return None if labels is None else labels[a:b]


def resolve_device(device):
    """"cpu" | "cuda" | "auto" -> "cpu" or "cuda"; CUDA asked for where there is none is an error."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    if device == "cpu":
        return "cpu"
    try:
        from engine.cuda_backend import available
    except ImportError as e:          # numba without its CUDA target
        if device == "auto":
            return "cpu"
        raise DeviceError(f"CUDA is not usable here ({e}); pip install -e '.[gpu]'") from None
    if available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise DeviceError("no CUDA device is available; use device='cpu' (or 'auto'), or install an "
                      "NVIDIA driver and `pip install -e '.[gpu]'`")


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
