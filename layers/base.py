"""The layer interface every layer type implements.

A layer type is a subclass of `Layer` registered under its YAML `type`. It declares
its keys (`keys`), checks its input shapes and computes its output shape in
`setup`, creates its parameters in `init_params`, and runs `forward` / `backward`
on float32 NCHW (or [N, D]) arrays. Layers never know about files or lines: they
raise `LayerError(key, message)` and the engine adds the file, line and layer. Its
`examples` (configs valid on a [6, 9, 9] input) let the tests build every type without a
hand-written entry per type.
"""
import math
import re
import reprlib

import numpy as np

REQUIRED = object()
INT_MAX = 2**31 - 1                       # int keys and shapes index int32 on CUDA
FLOAT32_MAX = float(np.finfo(np.float32).max)
# numbers YAML 1.1 reads as text: an exponent without a dot before it or a sign in it (1e-4, 3.0e38)
_YAML_TEXT_NUMBER = re.compile(r"[-+]?([0-9]+[eE][-+]?|[0-9]*\.[0-9]*[eE])[0-9]+")

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


def shown(value):
    """A short one-line repr of a user's value, for messages (huge or nested values cut)."""
    return _short.repr(value)


class LayerError(Exception):
    """A problem with one key of one layer (the engine adds file, line and layer)."""

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key
        self.message = message


class Key:
    """One YAML key of a layer type: its kind, default and allowed values."""

    def __init__(self, kind, default=REQUIRED, low=None, high=None, choices=None,
                 low_open=False, doc=""):
        self.kind = kind          # int | float | str | bool
        self.default = default
        self.low, self.high, self.low_open = low, high, low_open
        self.choices = choices
        self.doc = doc

    @property
    def required(self):
        return self.default is REQUIRED

    def check(self, key, value):
        """Return the value converted to this key's kind, or raise LayerError."""
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is bool and not isinstance(value, bool):
            raise LayerError(key, f"must be true or false, got {shown(value)}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise LayerError(key, f"must be an integer, got {shown(value)}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, float)):
            hint = ""
            if isinstance(value, str) and _YAML_TEXT_NUMBER.fullmatch(value):
                hint = " (text: YAML wants a dot and a signed exponent in a number, like 1.0e-4 or 3.0e+38)"
            raise LayerError(key, f"must be a number, got {shown(value)}{hint}")
        if kind is str and not isinstance(value, str):
            raise LayerError(key, f"must be a string, got {shown(value)}")
        if self.choices is not None and value not in self.choices:
            raise LayerError(key, f"must be one of {'|'.join(map(str, self.choices))}, got {shown(value)}")
        if kind in (int, float):
            if kind is float and not math.isfinite(value):
                raise LayerError(key, f"must be a finite number, got {value!r}")
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                sign = ">" if self.low_open else ">="
                raise LayerError(key, f"must be {sign} {self.low}, got {shown(value)}")
            if self.high is not None and value > self.high:
                raise LayerError(key, f"must be <= {self.high}, got {shown(value)}")
            # the kernels take int32 sizes and float32 values (on CUDA); beyond those, no net is sane
            if kind is int and value > INT_MAX:
                raise LayerError(key, f"must be <= {INT_MAX:,} (2**31 - 1), got {shown(value)}")
            if kind is float and abs(value) > FLOAT32_MAX:
                raise LayerError(key, f"must fit a float32 (|x| <= {FLOAT32_MAX:.4g}), got {value!r}")
        return value

    def describe(self):
        parts = [self.kind.__name__]
        if self.choices:
            parts = ["|".join(map(str, self.choices))]
        if self.low is not None or self.high is not None:
            lo = "" if self.low is None else f"{self.low}{'<' if self.low_open else '<='}"
            hi = "" if self.high is None else f"<={self.high}"
            parts.append(f"{lo}x{hi}")
        parts.append("required" if self.required else f"default {self.default!r}")
        return ", ".join(parts)


# Keys shared by layer types; a layer lists the ones it accepts (neuron: layers/neuron/spec.py).
# a std bounded so that the float32 weights stay finite: a Gaussian's draws reach ~6 std
INIT_W_KEY = Key(float, 0.01, low=0.0, high=3.0e37, doc="std of the zero-mean Gaussian for weights")
INIT_B_KEY = Key(float, 0.0, doc="constant for biases")
INIT_KEY = Key(str, "gaussian", choices=("gaussian", "kaiming", "xavier"),
               doc="weight std: gaussian init_w; kaiming gain/sqrt(fan); xavier gain*sqrt(2/(fan_in+fan_out)) "
                   "(gain: torch's calculate_gain of `nonlinearity`, default the layer's neuron)")
FAN_KEY = Key(str, "in", choices=("in", "out"), doc="kaiming's fan (torch's mode): fan_in or fan_out")
# The solver's per-layer multipliers, as engine.config.PARAM_KEYS (which a layer with an init_w
# key gets without listing them): a layer with parameters but no init_w lists the ones it takes.
LR_W_KEY = Key(float, 1.0, low=0.0, doc="learning-rate multiplier for the weights")
LR_B_KEY = Key(float, 1.0, low=0.0, doc="learning-rate multiplier for the biases")
WD_KEY = Key(float, 1.0, low=0.0, doc="weight-decay multiplier for the weights")


class Layer:
    """Base class. Subclasses set `type`, `keys`, and override the hooks below.

    Life cycle: `__init__` (validated config + input shapes) -> `setup` computes
    `output_shape` -> `init_params(rng)` -> many `forward`/`backward` pairs.
    `backward` uses what the latest `forward` kept, as Caffe's layers do.
    """

    type = None
    keys = {}
    join = "concat"       # several inputs: "concat" along axis 1, "flat" (flatten, then concat),
                          # or "separate" (forward gets a list, backward returns one dx per input)
    spatial = False       # True: the joined input must be [C, H, W]
    is_cost = False       # True: the net's output layer, providing `cost`
    classifies = False    # True: a cost layer whose output is class probabilities (top-k errors)
    uses_rng = False      # True: training-time forward draws from the `rng` it is given
    whole_batch = False   # True: a training forward uses statistics of the whole batch (batchnorm),
                          # which it sums through batch_sum where the batch is cut into parts
    batch_sum = None      # a whole_batch layer's statistics when the global batch is cut over
                          # processes (data-parallel ranks) or over the halves a CPU's threads
                          # run (threading "batch"): the engine sets batch_sum(values), which
                          # sums a float64 host array in place over every part of the global
                          # batch. A training forward/backward then calls it on every part in
                          # the same sequence (with zeros for an empty part: n = 0); evaluation
                          # never does. None: the batch is all here, in one pass
    parts_weighted = False  # with batch_sum: True where each part's output gradient already carries
                          # its share of the global batch's mean loss (the halves, weighted by the
                          # executor); False: each part's is of its own mean loss (the ranks)
    examples = ()         # configs (dicts of keys) valid on a [6, 9, 9] input, one per variant worth
                          # testing: every type must set its own (the all-types test nets are built from them)
    doc = ""

    def __init__(self, name, cfg, input_shapes):
        self.name = name
        self.cfg = self.complete(cfg)
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.input_shape = self.join_shapes(self.input_shapes)
        if self.spatial and len(self.input_shape) != 3:
            raise LayerError("inputs", f"needs a spatial [C, H, W] input, got {list(self.input_shape)}")
        self.output_shape = tuple(int(v) for v in self.setup(self.input_shape))
        if self.cfg.get("init", "gaussian") != "gaussian":
            self.weight_std()         # an activation without a gain fails here, naming its key
        if any(v <= 0 for v in self.output_shape):
            raise LayerError("inputs", f"output shape {list(self.output_shape)} is empty")
        self._buffers = {}

    def __getattr__(self, item):
        # cfg values read as attributes: self.size, self.stride, ...
        cfg = self.__dict__.get("cfg")
        if cfg is not None and item in cfg:
            return cfg[item]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {item!r}")

    @classmethod
    def complete(cls, cfg):
        """cfg with every key checked and defaults filled in (so layers can be built directly)."""
        out = {}
        for k in cfg:
            if k not in cls.keys:
                raise LayerError(k, f"unknown key for a {cls.type} layer; valid: {', '.join(cls.keys)}")
        for k, spec in cls.keys.items():
            if k not in cfg:
                if spec.required:
                    raise LayerError(k, f"missing required key for a {cls.type} layer")
                out[k] = spec.default
            elif cfg[k] is None and spec.default is None:
                out[k] = None
            else:
                out[k] = spec.check(k, cfg[k])
        return out

    # ---- shape --------------------------------------------------------------
    def join_shapes(self, shapes):
        if self.join == "separate":
            return shapes[0]      # setup checks the others (self.input_shapes)
        if len(shapes) == 1 and self.join != "flat":
            return shapes[0]
        if self.join == "flat":
            return (sum(math.prod(s) for s in shapes),)   # Python ints: no int64 overflow
        first = shapes[0]
        for s in shapes[1:]:
            if len(s) != len(first) or s[1:] != first[1:]:
                raise LayerError("inputs", "inputs to join along channels must agree in every other "
                                 f"dimension: {list(first)} vs {list(s)}")
        return (sum(s[0] for s in shapes),) + tuple(first[1:])

    def setup(self, input_shape):
        """Check keys against the (joined) input shape; return the output shape."""
        return input_shape

    # ---- parameters ---------------------------------------------------------
    def param_shapes(self):
        """{"weight": shape, "bias": shape} for layers with parameters, else {}."""
        return {}

    def init_params(self, rng):
        """Fresh parameters: zero-mean Gaussian weights of std `weight_std()`, constant init_b biases."""
        params = {}
        for pname, shape in self.param_shapes().items():
            if pname == "bias":
                params[pname] = np.full(shape, self.cfg.get("init_b", 0.0), np.float32)
            else:
                w = rng.standard_normal(shape)
                w *= self.weight_std()     # in place: the float64 draw is the peak
                params[pname] = w.astype(np.float32)
        return params

    def weight_std(self):
        """The std of the weights' Gaussian, as the `init` key says (torch.nn.init's
        kaiming_normal_ and xavier_normal_ formulas); init_w for gaussian."""
        init = self.cfg.get("init", "gaussian")
        if init == "gaussian":
            return self.cfg.get("init_w", 0.01)
        fan_in, fan_out = self.weight_fans()
        gain = self.init_gain()
        if init == "kaiming":
            return gain / math.sqrt(fan_in if self.cfg.get("fan", "in") == "in" else fan_out)
        return gain * math.sqrt(2.0 / (fan_in + fan_out))

    def weight_fans(self):
        """(fan_in, fan_out) of the weight, as torch computes them for [out, in, *kernel]:
        in * prod(kernel), out * prod(kernel) (fc [out, in]: in, out)."""
        shape = self.param_shapes()["weight"]
        receptive = math.prod(shape[2:])
        return shape[1] * receptive, shape[0] * receptive

    def init_gain(self):
        """torch.nn.init.calculate_gain of `nonlinearity`, or of the fused `neuron` without it."""
        from layers.neuron.spec import gain, parse     # here: that module imports this one
        key = "nonlinearity" if self.cfg.get("nonlinearity") is not None else "neuron"
        try:
            return gain(parse(self.cfg.get(key)))
        except ValueError as e:
            raise LayerError(key, f"{e} (init: {self.cfg.get('init')})") from None

    def macs(self):
        """Multiply-adds per image of the forward pass (for the summary)."""
        return 0

    # ---- state --------------------------------------------------------------
    def state_shapes(self):
        """{name: shape} of the layer's state: arrays that training passes update but that are
        no parameters (batchnorm's running statistics). The engine keeps them beside the
        parameters: `Net.state_dict()` holds them as "<layer>.<name>", checkpoints save them,
        and `forward`/`backward` find them in `params` under their names; the optimizer never
        sees them and they get no gradient. Default: none."""
        return {}

    def init_state(self):
        """Fresh state arrays {name: float32 array} (default zeros of `state_shapes`)."""
        return {k: np.zeros(shape, np.float32) for k, shape in self.state_shapes().items()}

    def update_state(self, state):
        """Update the state arrays in place from what the latest (training) forward kept.
        The engine calls it after the forward of a training step only (Net.loss_and_grads
        with train=True: the trainer), never after evaluation or a gradient check's passes."""
        if self.state_shapes():
            raise NotImplementedError(f"layer type {self.type} declares state but no update_state")

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        """{tag: (kind, shape)}: THE declaration of the scratch arrays a batch of n uses, as
        `forward` (with `train`) and then, with `backward`, `backward` (or `cost`) would.

        It is the one source of truth: layers do not spell shapes a second time, they take
        their arrays from `buffers(n, phase, ...)`, which allocates exactly what this
        declares (engine.memory adds the same entries up for the memory check and the
        summary). The tags declared with backward=False are the forward ones; those that
        only appear with backward=True are the backward (or cost) ones. A buffer a layer
        uses only in some configurations (an activation that needs its input, dropout in
        training) is declared only in those.

        kind is "activation" (the output), "gradient" (activation gradients), "workspace"
        (scratch, and what is kept for backward) or "param_grad". The default: the output
        "y", and "dx" in backward.
        """
        out = {"y": ("activation", (n,) + self.output_shape)}
        if backward and need_dx:
            out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    # ---- compute ------------------------------------------------------------
    def forward(self, x, params, train=False, rng=None):
        """x: joined input [N, *input_shape] float32 (join "separate": a list, one array
        per input); params: {name: array}, the parameters and the state arrays (read only
        here: `update_state` changes them). Returns [N, *output_shape]."""
        raise NotImplementedError(f"layer type {self.type} has no forward")

    def backward(self, dy, params, need_dx=True):
        """dy: gradient w.r.t. the latest output. Returns (dx or None, {param: grad});
        dx is a list, one array per input, for join "separate"."""
        raise NotImplementedError(f"layer type {self.type} has no backward")

    def cost(self, labels):
        """Cost layers only: (mean loss, gradient w.r.t. this layer's input)."""
        raise NotImplementedError(f"layer type {self.type} is not a cost layer")

    def check_labels(self, labels, n=None):
        """Cost layers only: labels for a batch of n, checked, or ValueError saying why."""
        raise NotImplementedError(f"layer type {self.type} is not a cost layer")

    # ---- helpers ------------------------------------------------------------
    _BACKWARD_PHASES = ("backward", "cost")

    def buffers(self, n, phase, train=False, need_dx=True, zero=()):
        """{tag: float32 array} of the buffers `buffer_shapes` declares for `phase`, each
        allocated (or reused) by `buffer` with the declared shape.

        phase "forward": what buffer_shapes(n, train, backward=False) declares; "backward" or
        "cost": what buffer_shapes(n, train, backward=True, need_dx) adds to that (the forward
        ones stay where forward left them). `zero`: tags to fill with zeros. A buffer holding
        another dtype is a view the layer takes (b["arg"].view(np.int32)).
        """
        declared = self.buffer_shapes(n, train, False, need_dx)
        if phase == "forward":
            tags = declared
        elif phase in self._BACKWARD_PHASES:
            forward = declared
            declared = self.buffer_shapes(n, train, True, need_dx)
            tags = [tag for tag in declared if tag not in forward]
        else:
            raise ValueError(f"phase must be forward, backward or cost, got {phase!r}")
        return {tag: self.buffer(tag, declared[tag][1], tag in zero) for tag in tags}

    def buffer(self, tag, shape, zero=False):
        """The allocation primitive under `buffers`: a float32 array kept between calls
        and reused while its shape holds. Layers take their arrays from `buffers`."""
        buf = self._buffers.get(tag)
        if buf is None or buf.shape != tuple(shape):
            buf = self._buffers[tag] = np.empty(tuple(int(v) for v in shape), np.float32)
        if zero:
            buf.fill(0.0)
        return buf

    def release_buffers(self):
        self._buffers.clear()


def join_inputs(layer, xs, out=None):
    """Join several input activations as the layer's `join` rule says (a view for one input).

    `out`, when given, is a float32 [N] + layer.input_shape array the joined input is
    written into (the engine keeps one per layer, so a step allocates nothing)."""
    n = xs[0].shape[0]
    if layer.join == "separate":
        return list(xs)
    if layer.join == "flat":
        if len(xs) == 1:
            return xs[0].reshape(n, -1)
        xs = [x.reshape(n, -1) for x in xs]
    elif len(xs) == 1:
        return xs[0]
    if out is not None:
        return np.concatenate(xs, axis=1, out=out)
    return np.concatenate(xs, axis=1)


def split_grad(layer, dx, input_shapes):
    """Undo `join_inputs` on a gradient: one array per input, in input order."""
    if layer.join == "separate":
        return [np.asarray(g).reshape((g.shape[0],) + tuple(s)) for g, s in zip(dx, input_shapes)]
    n = dx.shape[0]
    if len(input_shapes) == 1:
        return [dx.reshape((n,) + tuple(input_shapes[0]))]
    out, start = [], 0
    for s in input_shapes:
        width = math.prod(s) if layer.join == "flat" else s[0]
        part = dx[:, start:start + width]
        out.append(part.reshape((n,) + tuple(s)))
        start += width
    return out


def check_same_shapes(layer):
    """LayerError unless the layer has 2+ inputs, all of one shape (join "separate" types: eltsum, eltmax)."""
    shapes = layer.input_shapes
    if len(shapes) < 2:
        raise LayerError("inputs", f"a {layer.type} layer needs at least 2 inputs, got {len(shapes)}")
    if any(s != shapes[0] for s in shapes[1:]):
        raise LayerError("inputs", f"inputs of a {layer.type} layer must all have the same shape: "
                         + " vs ".join(str(list(s)) for s in shapes))


def out_size_floor(size, window, stride, padding=0):
    """Output side of a conv: floor((in + 2p - k) / s) + 1 (the PyTorch/Caffe rule)."""
    return (size + 2 * padding - window) // stride + 1


def out_size_ceil(size, window, stride):
    """Output side of a pool: ceil((in - k) / s) + 1 (cuda-convnet's rule)."""
    return -(-(size - window) // stride) + 1
