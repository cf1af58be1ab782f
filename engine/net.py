"""`Net`: a built graph with its parameters, run forward and backward by the executor on a backend."""
import os
import textwrap

import numpy as np

from engine import columns, devices, graph, memory
from engine.config import INPUT_NAME, parse_checkpoint_net, parse_net
from engine.cpu_backend import CpuBackend
from engine.errors import ConfigError
from engine.executor import Executor
from layers.draw_key import DrawKey


SUMMARY_INPUTS_WIDTH = 40      # a concat of four inception branches would make the table 180 wide


def _wrap_inputs(row):
    """A summary row whose inputs cell is long, as that row and continuation rows holding
    the rest of its inputs (the other cells blank)."""
    names = row[3].split(",")
    cells, cell = [], ""
    for name in names:
        piece = name if not cell else f"{cell},{name}"
        if cell and len(piece) > SUMMARY_INPUTS_WIDTH:
            cells.append(cell + ",")
            piece = name
        cell = piece
    cells.append(cell)
    return [row[:3] + (cells[0],) + row[4:]] + [("", "", "", c, "", "", "") for c in cells[1:]]


class Net:
    """A network built from a net file.

    Parameters live in `state_dict()` order, keyed "<layer>.weight" / "<layer>.bias", each
    layer's state (Layer.state_shapes: batchnorm's "<layer>.running_mean", ...) after them.
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
        self._state = {}           # "<layer>.<name>" -> float32 array: state, no parameter
        for node in self._nodes:
            lp = node.layer.init_params(init_rng)
            self._layer_params[node.name] = lp
            for pname, arr in lp.items():
                self._params[f"{node.name}.{pname}"] = arr
            for sname, arr in node.layer.init_state().items():
                self._state[f"{node.name}.{sname}"] = arr
        # dropout and other training-time randomness; the trainer saves and restores its state
        self.rng = np.random.default_rng([seed, 1])
        # or an explicit layers.draw_key.DrawKey(seed, epoch, step, sample_offset) for every
        # training pass until changed (a data-parallel rank: its slice's first global sample)
        self.draw_key = None
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
        self.backend.pull(self._arrays())
        self._use(devices.backend_for(device, self, streams=streams))
        return self

    # ---- structure ----------------------------------------------------------
    @property
    def layers(self):
        """The layers in execution order (each with .name, .type, .gpu, .inputs, .output_shape)."""
        return list(self._nodes)

    @property
    def output_layer(self):
        """The net's output: its last layer nobody reads (forward's default, predict, top-k)."""
        return self._nodes[-1]

    @property
    def cost_heads(self):
        """[(layer, weight)]: the cost layers whose weighted costs sum to the loss, the output
        last (one for most nets; GoogLeNet's auxiliary heads add theirs)."""
        return [(self._nodes[i], w) for i, w in self._executor.heads]

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
        rows = [r for row in rows for r in _wrap_inputs(row)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        right = {5, 6}

        def fmt(r):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        rule = "-" * len(fmt(rows[0]).ljust(sum(widths) + 2 * (len(widths) - 1)))
        lines = [f"net '{self.name}': {len(self._nodes)} layers, {self.num_params:,} parameters, "
                 f"{total_macs / 1e6:,.1f} M multiply-adds per image", rule, fmt(rows[0]), rule]
        lines += [fmt(r) for r in rows[1:-1]] + [rule, fmt(rows[-1]),
                                                  *textwrap.wrap(f"CPU threading: {self._lane_mode} ({self.threading_reason})",
                                                                width=max(len(rule), 90), subsequent_indent="  "), ""]
        heads = self.cost_heads
        if len(heads) > 1 or heads[0][1] != 1.0:     # auxiliary heads, a weighted cost
            terms = [n.name if w == 1.0 else f"{w:g} x {n.name}" for n, w in heads[-1:] + heads[:-1]]
            lines[-1:-1] = [f"loss: {' + '.join(terms)} (output: {self.output_layer.name})"]
        lines += memory.table(self._nodes, self.input_shape, batch)
        return "\n".join(lines)

    def __repr__(self):
        return f"<Net '{self.name}': {len(self._nodes)} layers, {self.num_params:,} parameters>"

    # ---- parameters ---------------------------------------------------------
    def state_dict(self):
        """{"<layer>.weight": array, "<layer>.bias": array, and each layer's state such as
        "<layer>.running_mean"} (host copies, on any device)."""
        arrays = self._arrays()
        self.backend.pull(arrays)
        return {k: v.copy() for k, v in arrays.items()}

    def parameters(self):
        """The host parameter arrays: on the CPU the live ones (the optimizer updates them in
        place); on CUDA copies, refreshed by state_dict() (`backend.params` are the live ones)."""
        return self._params

    def layer_state(self):
        """The host arrays of the layers' state ("<layer>.running_mean", ...: no parameters,
        updated by training steps, never by the optimizer): on the CPU the live ones; on CUDA
        copies, refreshed by state_dict() (`backend.state` are the live ones)."""
        return self._state

    def _arrays(self):
        """Parameters and state in state_dict order: each layer's parameters, then its state."""
        if not self._state:
            return self._params
        out = {}
        for node in self._nodes:
            for group in (node.layer.param_shapes(), node.layer.state_shapes()):
                for name in group:
                    key = f"{node.name}.{name}"
                    out[key] = self._params.get(key, self._state.get(key))
        return out

    def load_state_dict(self, state):
        """Copy a state_dict's arrays (parameters and layer state, all of them) into the net."""
        mine = self._arrays()
        missing = [k for k in mine if k not in state]
        unexpected = [k for k in state if k not in mine]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected " + ", ".join(unexpected))
            raise KeyError(f"state dict does not fit net '{self.name}': " + "; ".join(parts))
        for k, arr in mine.items():
            new = np.asarray(state[k])
            if new.shape != arr.shape:
                raise ValueError(f"state dict key '{k}': shape {list(new.shape)} does not fit the "
                                 f"net's {list(arr.shape)}")
        for k, arr in mine.items():      # checked first: a misfit leaves the net as it was
            arr[...] = np.asarray(state[k]).astype(np.float32, copy=False)
        self.backend.push(mine)

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
            labels = self._check_labels(labels, n)   # the device cannot say why
        xd, ld = self.backend.input(x, labels if backward else None)
        out = self._executor.step(xd, ld, train, self.draw_layer_seeds, backward, watch, timer)
        self.backend.end_step()
        return out

    def draw_layer_seeds(self, nodes=None):
        """{layer: draw key} for one training pass of the random layers (dropout): the pass's
        one layers.draw_key.DrawKey for each (a layer's draws also hash its name, and each
        sample's its global index, so they depend on no lane, device or batch split).
        The key is `draw_key` where set, else DrawKey(seed) with the seed drawn from `rng`
        (one draw per pass: restoring rng's state replays a pass's masks)."""
        names = [node.name for node in (nodes or self._nodes) if node.layer.uses_rng]
        if not names:
            return {}
        key = self.draw_key if self.draw_key is not None else DrawKey(int(self.rng.integers(2**63)))
        return dict.fromkeys(names, key)

    def forward(self, x, train=False, outputs=None, timer=None):
        """Run the net on prepared input: x float32 [N, C, H, W] (C, H, W = `input_shape`).

        "Prepared" means as in training: the mean image subtracted, scaled, centre-cropped
        to the input size. Raw images (uint8 or float pixels, channels last, any size) go
        through `predict`, `features` or `prepare` (which returns exactly this input).
        Returns the last layer's output (probabilities for a softmax net), or with
        `outputs=[names]` a dict name -> activation (host copies; "data" is allowed).
        `train=True` runs the training-time forward (dropout, batch statistics) without
        updating any layer state (only a training step, loss_and_grads, does).
        `timer` (a dict) collects each layer's time (the time verb; engine.executor).
        Anything else (a wrong shape or dtype; uint8, channels-last or raw-pixel-valued
        input) is a one-line ValueError saying what was expected and what was given.
        """
        self._check_prepared(x)
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

        Gradient arrays are host copies; `train=True` applies dropout (drawing from `self.rng`),
        normalises by batch statistics and updates the layers' state, as a training step does.
        """
        loss, grads = self.loss_and_grads(x, labels, train)
        return loss, {k: self.backend.to_host(g) for k, g in grads.items()}

    def loss(self, x, labels):
        """The cost of a batch at test time (no dropout, no backward): with several cost heads,
        the sum of their weighted costs."""
        return self.loss_and_output(x, labels)[0]

    def loss_and_output(self, x, labels):
        """(loss, the output layer's activations) of a batch at test time, from one pass."""
        parts, _ = self._run(x, None, False, backward=False)
        n = parts[-1][2]
        labels = self._check_labels(labels, n)
        backend, out = self.backend, self._nodes[-1].name
        total = 0.0
        for c, a, b, _ in parts:
            part = None if labels is None else labels[a:b]
            total += self._executor.cost(backend.labels(part), copy=c) * (b - a)
        output = np.concatenate([backend.to_host(acts[out]) for _, _, _, acts in parts])
        return total / n, output

    def _check_labels(self, labels, n):
        """The labels as every cost head takes them (checked by each), or None where none needs any."""
        self._cost_layer()
        checked = [node.layer.check_labels(labels, n=n) for node, _ in self.cost_heads]
        return next((c for c in reversed(checked) if c is not None), None)

    def _cost_layer(self):
        out = self._nodes[-1]
        if not out.layer.is_cost:
            raise ValueError(f"net '{self.name}' ends in a {out.type} layer, not a cost layer "
                             "(softmax): it has no loss to differentiate")
        return out.layer

    def loss_and_grads(self, x, labels, train=True, watch=None, timer=None):
        """(mean loss, {"<layer>.<param>": gradient}) with the gradients on the net's backend
        (they may be the layers' reused buffers: the optimizer reads them in place).
        With `train` it is a training step: dropout, batch statistics, and the layers' state
        (batchnorm's running statistics) updated after their forward.

        `watch(kind, layer, array)`, when given, sees every layer's "output" in forward
        order, then "cost", then each layer's "input gradient" and "<param> gradient" in
        backward order (engine.finite uses it to find where a NaN was born); `timer` (a
        dict) collects each layer's times (the time verb). See engine.executor."""
        _, (loss, grads) = self._run(x, labels, train, backward=True, watch=watch, timer=timer)
        return (loss if isinstance(loss, float) else self.backend.value(loss)), grads   # several heads: a float

    # ---- raw images -----------------------------------------------------------
    _RAW_HINT = ("; raw images go through net.predict(images), net.features(images, layer) or "
                 "net.prepare(images), which returns this input")

    def _check_prepared(self, x):
        """A one-line ValueError unless x is what forward takes (prepared float32 [N, C, H, W]);
        input that looks like raw images (integer pixels, channels last, values far outside
        the stored preparation's range) is pointed to predict/prepare."""
        c, h, w = self.input_shape
        want = f"prepared float32 [N, {c}, {h}, {w}]"
        if not isinstance(x, np.ndarray):
            raise ValueError(f"forward() takes a NumPy array, {want}; got {type(x).__name__}{self._RAW_HINT}")
        given = f"{x.dtype} {list(x.shape)}"
        if x.dtype.kind in "biu":
            raise ValueError(f"forward() takes {want}; got {given}, which looks like raw images{self._RAW_HINT}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            channels_last = x.ndim in (3, 4) and x.shape[-1] in (1, 3, c) and (x.ndim == 3 or x.shape[1] != c)
            looks = ", which looks like raw images" + (" (channels last)" if channels_last else "") \
                if (x.ndim in (2, 3) or channels_last) else ""
            raise ValueError(f"forward() takes {want}; got {given}{looks}{self._RAW_HINT}")
        if x.dtype != np.float32:
            raise ValueError(f"forward() takes {want}; got {given} (x.astype(np.float32) if it is prepared "
                             f"already){self._RAW_HINT}")
        if x.shape[0] == 0:
            raise ValueError(f"forward() takes {want}; got an empty batch {list(x.shape)}")
        bound = self._prepared_bound()
        if bound and x.size:
            peak = max(float(x.max()), -float(x.min()))
            if peak > 10 * bound:
                raise ValueError(f"forward() takes {want}, whose values lie within +-{bound:.3g} for this "
                                 f"net's preparation; got values up to {peak:.4g}, which look like raw "
                                 f"pixels{self._RAW_HINT}")

    def _prepared_bound(self):
        """The largest |value| a prepared input can hold, for 8-bit pixels (0..255) prepared
        with the stored mean and scale; None without a stored preparation or for data whose
        pixels are not 8-bit (a mean outside 0..255)."""
        pre = self.preprocess
        if pre is None or pre.mean.size == 0:
            return None
        lo, hi = float(pre.mean.min()), float(pre.mean.max())
        if lo < 0 or hi > 255:
            return None
        return max(hi, 255.0 - lo) * abs(pre.scale) or None

    def _preparation(self, verb):
        if self.preprocess is None:
            raise ValueError(f"{verb}() needs the input preparation stored with a checkpoint: load the "
                             "net with engine.load(RUN_FOLDER) (or engine.load(NET, checkpoint=RUN_FOLDER)), "
                             "or call forward() with prepared float32 [N, C, H, W] input")
        return self.preprocess

    def _pil_to_arrays(self, images):
        """PIL images (one, or a list) as arrays in the net's colour mode; anything else as is."""
        def convert(img):
            target = {1: "L", 3: "RGB"}.get(self.input_shape[0])
            if target and img.mode != target and img.mode not in ("I", "F") and not img.mode.startswith("I;"):
                img = img.convert(target)
            return np.asarray(img)

        def is_pil(obj):
            return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert") and hasattr(obj, "mode")
        if is_pil(images):
            return convert(images)
        if isinstance(images, (list, tuple)) and images and all(is_pil(i) for i in images):
            return [convert(i) for i in images]
        return images

    def prepare(self, images):
        """Raw images -> the prepared float32 [N, C, H, W] that `forward` takes.

        images: uint8 or float pixel values (as the training data held them: 0..255 for image
        data), [N, H, W] or [H, W] (one channel), [N, H, W, C] or [H, W, C], or PIL images
        (one, or a list); images of another size than the training images are resized
        (shorter side) and centre-cropped. Then the stored preparation is applied as at test
        time: the mean image subtracted, the centre crop of the input size, the scale. A wrong
        shape, dtype or channel count is a one-line ValueError (engine.DataError).
        """
        return self._prepare(images, "prepare")

    def _prepare(self, images, verb):
        pre = self._preparation(verb)
        from engine.datasets.augment import prepare_images
        return prepare_images(self._pil_to_arrays(images), self.input_shape, pre.mean, pre.scale)

    def predict(self, images, top=None):
        """Class probabilities for raw images, prepared as in training.

        images: as `prepare` takes them (uint8 or float, [N, H, W] / [N, H, W, C] or a single
        image, any size at least the input). Returns [N, classes] probabilities, or with
        `top=k` a list per image of (class, probability) pairs, best first (class names where
        the training data had them). Equals forward(prepare(images)).
        """
        if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
            from engine.datasets import DataError     # a ValueError the CLI prints in one line
            raise DataError(f"top must be a whole number >= 1 (or None for all probabilities), got {top!r}")
        probs = self.forward(self._prepare(images, "predict"))
        if top is None:
            return probs
        names = self.class_names or [str(i) for i in range(probs.shape[1])]
        order = np.argsort(-probs, axis=1)[:, :int(top)]
        return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

    def features(self, images, layer="fc7"):
        """A layer's activations for raw images: a host array [N, ...] (for a conv layer
        [N, C, H, W], for an fc layer [N, outputs]); with a list of layer names, a dict
        name -> array. images: as `prepare` takes them. Equals
        forward(prepare(images), outputs=[layer])[layer]."""
        single = isinstance(layer, str)
        if single:
            names = [layer]
        elif isinstance(layer, (list, tuple)) and layer and all(isinstance(n, str) for n in layer):
            names = list(layer)
        else:
            raise ValueError(f"layer must be a layer name or a list of them, got {layer!r}")
        known = [INPUT_NAME] + [n.name for n in self._nodes]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"net '{self.name}' has no layer {', '.join(map(repr, unknown))}; its layers: "
                             f"{', '.join(known)}")
        acts = self.forward(self._prepare(images, "features"), outputs=names)
        return acts[layer] if single else acts


def load(source=None, seed=0, checkpoint=None, device="cpu", threading="auto", plugins=False, overrides=None):
    """Build a Net from a net (a path to a .yaml file, YAML text, or a dict) or from a run.

        engine.load("runs/lenet5-20261124-101500")       # a run folder or checkpoint file: its net + weights
        engine.load("nets/lenet5.yaml")                   # a net file: fresh weights
        engine.load("nets/lenet5.yaml", checkpoint=RUN)   # this net with a run's weights

    Weights are drawn from each layer's init keys with a generator seeded by `seed`.
    With `checkpoint` (a run folder, meaning its latest checkpoint, or one checkpoint
    file) the trained weights and the stored input preparation are loaded too, and
    `source` may be None to use the net text saved in the checkpoint. A `source` that is a
    run folder or a checkpoint file (<epoch>.json / <epoch>.npz) means that checkpoint,
    with the net text saved in it.
    `device` is "cpu", "cuda" or "auto" (CUDA when a device is available).
    `threading` is how the CPU runs the layers: "auto", "columns", "batch" or "layers"
    (Net.threading).
    `overrides` replace values of the net file, as `--set` does on the command line:
    {"fc8.outputs": 5, "input.shape": [3, 64, 64]} or ["fc8.outputs=5"] (engine.config.parse_net);
    a checkpoint's net gets the overrides it was trained with, then these.
    Any problem in the definition raises `engine.ConfigError` (file, line, layer, key); a
    checkpoint that is missing, damaged or does not fit the net, `engine.CheckpointError`.
    """
    if isinstance(source, (str, os.PathLike)) and "\n" not in os.fspath(source):
        path = os.fspath(source)
        base, ext = os.path.splitext(path)
        is_run = os.path.isdir(path) or ext == ".npz" or (
            ext == ".json" and os.path.isfile(base + ".json") and os.path.isfile(base + ".npz"))
        if is_run and checkpoint is not None:
            raise ConfigError(f"{path} is a run folder or checkpoint, not a net: give a net file (.yaml), "
                              "YAML text or a dict with checkpoint=..., or engine.load(RUN) alone for the "
                              "run's own net and weights")
        if is_run:
            source, checkpoint = None, path
    if checkpoint is None:
        if source is None:
            raise ConfigError("engine.load needs a net (a .yaml path, YAML text or a dict) or a checkpoint "
                              "(a run folder or a checkpoint file)")
        net = Net(parse_net(source, plugins=plugins, overrides=overrides), seed=seed)
        net.threading = threading
        return net.to(device)
    from engine import checkpoint as ckpt
    from engine.datasets.augment import Preprocess
    arrays, meta = ckpt.load(checkpoint)
    spec = (parse_net(source, plugins=plugins, overrides=overrides) if source is not None
            else parse_checkpoint_net(meta, plugins, overrides=overrides))
    net = Net(spec, seed=seed)
    net.threading = threading
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    # what does not fit, said once and in one line (not load_state_dict's KeyError repr inside)
    mine = net._arrays()
    missing = [k for k in mine if k not in params]
    unexpected = [k for k in params if k not in mine]
    misfits = (([f"missing {', '.join(missing)}"] if missing else [])
               + ([f"unexpected {', '.join(unexpected)}"] if unexpected else [])
               + [f"{k} is {list(params[k].shape)} in the checkpoint but {list(a.shape)} in the net"
                  for k, a in mine.items() if k in params and np.shape(params[k]) != a.shape])
    try:
        if misfits:
            raise ValueError("; ".join(misfits))
        net.load_state_dict(params)
    except (KeyError, ValueError) as e:
        detail = str(e.args[0]) if e.args else str(e)
        said = f"state dict does not fit net '{net.name}': "
        if detail.startswith(said):
            detail = detail[len(said):]
        raise ckpt.CheckpointError(f"{meta['path']}: does not fit net '{net.name}': {detail}") from None
    net.preprocess = Preprocess.from_json(meta["preprocess"], arrays["mean"])
    net.class_names = meta.get("class_names")
    net.data_spec = meta.get("settings", {}).get("data")
    net.checkpoint_meta = meta
    return net.to(device)
