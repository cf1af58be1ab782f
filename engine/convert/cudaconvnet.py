"""cuda-convnet layer files to a YAML net (`python -m engine convert LAYERS.cfg PARAMS.cfg`).

cuda-convnet (2011-12, "cc1") and cuda-convnet2 (2014, "cc2") describe a net in two INI
files read with Python's ConfigParser: the layer-definition file (architecture) and the
layer-parameter file (learning rates, momentum, weight decay, normalisation constants,
dropout). `convert` maps every section to one of our layers with the same name and
wiring and returns the YAML text with notices for the user. Nothing here prints or writes.

Shapes and parameter counts are computed by cuda-convnet's own rules while converting and
checked against our engine by engine.convert.checks; the YAML is written by
engine.convert.writer (both shared with the Caffe converter).
"""
import configparser
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

import layers as layer_types
from layers.neuron import spec as neuron_spec

from engine.convert.checks import check_against_engine, check_key, check_layer
from engine.convert.common import MAX_COLUMN, Conversion, Converted, ConvertError, parse_chw
from engine.convert.writer import emit, schedule_text
from engine.errors import ConfigError

MISSING = object()


# cuda-convnet neuron types and how many bracketed parameters each takes (cc1 + cc2).
CC_NEURONS = {"ident": 0, "logistic": 0, "abs": 0, "relu": 0, "nrelu": 0, "softrelu": 0,
              "square": 0, "sqrt": 0, "log": 1, "tanh": 2, "brelu": 1, "linear": 2, "drelu": 1}

# Learning-rate schedules of cc2 (`epsW=dexp[base=0.01;tgtFactor=250;numSteps=4]`): parameters
# in order; a plain number is const[base=number].
CC_SCHEDULES = {"const": ("base",), "linear": ("base", "tgtFactor"), "exp": ("base", "tgtFactor"),
                "dexp": ("base", "tgtFactor", "numSteps")}

# randSparse's channel sets: cuda-convnet drew them with numpy.random when it created the net
# (LocalLayerParser.gen_rand_conns: groups*filterChannels/channels permutations of the channels,
# concatenated, group g taking the g-th run of filterChannels). We draw them the same way from
# numpy.random.RandomState(RAND_SPARSE_SEED), one generator for the file, layers in file order,
# and write them out (`channel_sets`), so the YAML holds the net whatever numpy does later.
RAND_SPARSE_SEED = 0

# Keys that only tuned cuda-convnet's CUDA kernels or its multi-GPU scheduling, or that it
# parsed without using: accepted (with the values that change nothing) and dropped.
DROPPED_NOTE = "accepted and dropped, as they only tuned cuda-convnet's CUDA kernels or GPU scheduling"

# cuda-convnet types with no equivalent here.
UNSUPPORTED_TYPES = {
    "sfc": "split fully-connected", "cmpool": "cross-map pooling", "sum": "sum", "nailbed": "bed of nails",
    "blur": "Gaussian blur", "href": "horizontal reflection", "resize": "resize", "rgb2yuv": "RGB to YUV",
    "rgb2lab": "RGB to L*a*b*", "rscale": "random scale", "crop": "crop", "cost.ce": "cross-entropy cost",
    "cost.crossent": "cross-entropy cost", "cost.bce": "binomial cross-entropy cost",
    "cost.dce": "detection cross-entropy cost",
}


# cuda-convnet type -> the _Converter method that converts it
HANDLERS = {"data": "_data", "conv": "_conv", "local": "_local", "fc": "_fc", "pool": "_pool",
            "rnorm": "_rnorm", "cnorm": "_cnorm", "cmrnorm": "_cmrnorm", "neuron": "_neuron",
            "softmax": "_softmax", "eltsum": "_eltsum", "eltmax": "_eltmax", "concat": "_concat",
            "pass": "_pass", "dropout": "_dropout", "dropout2": "_dropout2", "hs": "_hs",
            "cost.logreg": "_cost_logreg", "cost.sum2": "_cost_sum2"}


# ---- the INI files ------------------------------------------------------------------------
class Section:
    """One `[name]` section: typed getters that remember which keys were read, and errors
    that name the file, line, section and key."""

    def __init__(self, file, name, line, values, key_lines):
        self.file, self.name, self.line = file, name, line
        self.values = values            # lower-cased key -> raw text
        self.key_lines = key_lines      # lower-cased key -> (line, key as spelled)
        self.used = set()

    def spelled(self, key):
        return self.key_lines.get(key, (None, key))[1]

    def fail(self, key, message):
        if key is None:
            raise ConvertError(message, file=self.file, line=self.line, layer=self.name)
        line = self.key_lines.get(key, (self.line, key))[0]
        raise ConvertError(message, file=self.file, line=line, layer=self.name, key=self.spelled(key))

    def has(self, key):
        return key in self.values

    def raw(self, key, default=MISSING):
        self.used.add(key)
        if key in self.values:
            return self.values[key].strip()
        if default is MISSING:
            self.fail(None, f"missing required key '{key}'")
        return default

    def _convert(self, key, text, conv, what):
        try:
            return conv(text)
        except ValueError:
            self.fail(key, f"must be {what}, got {text!r}")

    def int(self, key, default=MISSING):
        v = self.raw(key, default)
        return v if not isinstance(v, str) else self._convert(key, v, int, "an integer")

    def float(self, key, default=MISSING):
        v = self.raw(key, default)
        return v if not isinstance(v, str) else self._convert(key, v, float, "a number")

    def bool(self, key, default=MISSING):
        v = self.raw(key, default)
        return v if not isinstance(v, str) else self._convert(key, v, _ini_bool, "true or false (1/0)")

    def list(self, key, n, conv, what, default=MISSING):
        """A per-input list: n values, or one value meaning all n (cc2 expands it; cc1 wrote all)."""
        v = self.raw(key, MISSING if default is MISSING else None)
        if v is None:
            return [default] * n
        parts = [self._convert(key, p.strip(), conv, what) for p in v.split(",")]
        if len(parts) == 1:
            return parts * n
        if len(parts) != n:
            self.fail(key, f"has {len(parts)} values for {n} inputs")
        return parts

    def any_length(self, key, conv, what):
        """A comma-separated list of any length (a required key)."""
        return [self._convert(key, p.strip(), conv, what) for p in self.raw(key).split(",")]

    def same(self, key, values, why):
        """The one value of a per-input list whose entries our layer cannot tell apart."""
        if len(set(values)) > 1:
            self.fail(key, f"differs between inputs ({', '.join(map(str, values))}): {why}")
        return values[0]

    def unused(self):
        return [k for k in self.values if k not in self.used]


def _ini_bool(text):
    states = configparser.ConfigParser.BOOLEAN_STATES
    if text.lower() not in states:
        raise ValueError(text)
    return states[text.lower()]


_OPTION_LINE = re.compile(r"\s*(?P<key>[^=:\s#;\[][^=:]*?)\s*[=:]")


def read_ini(path):
    """The sections of an INI file in order, as cuda-convnet's ConfigParser read them."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConvertError(f"cannot read: {e.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise ConvertError("not a text file", file=path) from None
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConvertError(f"section [{e.section}] appears twice", file=path, line=e.lineno) from None
    except configparser.DuplicateOptionError as e:
        raise ConvertError("key appears twice in the section", file=path, line=e.lineno,
                           layer=e.section, key=e.option) from None
    except configparser.MissingSectionHeaderError as e:
        raise ConvertError(f"a line before the first [section]: {e.line.strip()!r}", file=path,
                           line=e.lineno) from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        raise ConvertError(f"not a `key=value` line: {line.strip()!r}", file=path, line=lineno) from None
    except configparser.Error as e:
        raise ConvertError(str(e).splitlines()[0], file=path) from None
    # ConfigParser keeps no line numbers: find each section's and key's line for messages
    section_lines, key_lines, current = {}, {}, None
    for number, line in enumerate(text.splitlines(), 1):
        m = parser.SECTCRE.match(line)
        if m:
            current = m.group("header")
            section_lines.setdefault(current, number)
            key_lines.setdefault(current, {})
            continue
        m = _OPTION_LINE.match(line)
        if m and current is not None and not line[:1].isspace():
            key_lines[current].setdefault(m.group("key").lower(), (number, m.group("key")))
    return [Section(path, name, section_lines.get(name), dict(parser[name]), key_lines.get(name, {}))
            for name in parser.sections()]


# ---- values -------------------------------------------------------------------------------
def parse_neuron(text):
    """cuda-convnet's `neuron=` value, checked and normalised ("tanh[1.7, 0.6]" -> "tanh[1.7,0.6]");
    None for the identity. ValueError says what is wrong.

    The file format's rules are checked here (cuda-convnet's names; tanh, linear and brelu
    need their brackets), the parameters by layers.neuron.spec.parse. A cuda-convnet
    function that we lack (nrelu, log, drelu) passes through: the layer's key names it."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:\[([^\]]*)\])?\s*", text)
    if not m or m.group(1) not in CC_NEURONS:
        raise ValueError(f"'{text}' is not a cuda-convnet neuron type (valid: {', '.join(CC_NEURONS)})")
    name, args = m.group(1), m.group(2)
    values = [] if args is None else [a.strip() for a in args.split(",")]
    if len(values) != CC_NEURONS[name]:
        want = CC_NEURONS[name]
        raise ValueError(f"neuron '{name}' takes {want} bracketed parameter{'s' if want != 1 else ''}"
                         f"{' (e.g. tanh[a,b])' if want else ''}, got '{text}'")
    normal = f"{name}[{','.join(values)}]" if values else name
    if name not in neuron_spec.FUNCTIONS:
        return normal
    try:
        neuron = neuron_spec.parse(normal)
    except ValueError as e:        # name and count are right: a parameter's value is not
        raise ValueError(f"neuron parameters must be numbers the function accepts: {e}") from None
    return None if neuron.identity else normal


@dataclass(frozen=True)
class Schedule:
    """A cc2 learning-rate schedule; `shape` is what our one net-wide schedule can share."""
    kind: str                 # const | exp | dexp
    base: float
    factor: float = None
    steps: int = None
    text: str = ""

    @property
    def shape(self):
        return (self.kind, self.factor, self.steps)

    def __str__(self):          # as the file spelled it, for messages
        return self.text


def parse_schedule(text):
    """`0.001`, `const[base=b]`, `exp[base=b;tgtFactor=t]` or `dexp[base=b;tgtFactor=t;numSteps=n]`
    as a Schedule; ValueError says what is wrong."""
    text = text.strip()
    try:
        return Schedule("const", float(text), text=text)
    except ValueError:
        pass
    m = re.fullmatch(r"(\w+)\s*(?:\[(.*)\])?", text)
    kind = m.group(1).lower() if m else None
    if kind not in CC_SCHEDULES:
        raise ValueError(f"'{text}' is not a number or a schedule ({', '.join(CC_SCHEDULES)}[...])")
    values = {}
    for part in (m.group(2) or "").split(";"):
        name, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"'{text}': parameters are name=value, separated by ';'")
        values[name.strip().lower()] = value.strip()
    want = CC_SCHEDULES[kind]
    if set(values) != {w.lower() for w in want}:
        raise ValueError(f"'{text}': {kind} takes [{';'.join(f'{w}=...' for w in want)}]")
    try:
        base = float(values["base"])
        factor = float(values["tgtfactor"]) if "tgtfactor" in values else None
        steps = int(values["numsteps"]) if "numsteps" in values else None
    except ValueError:
        raise ValueError(f"'{text}': parameters must be numbers (numSteps an integer)") from None
    if factor is not None and factor <= 0:
        raise ValueError(f"'{text}': tgtFactor must be > 0")
    if steps is not None and steps < 1:
        raise ValueError(f"'{text}': numSteps must be >= 1")
    if kind == "const" or factor == 1.0:
        return Schedule("const", base, text=text)
    if kind == "dexp" and steps == 1:      # cc2 keeps only the final level, base / tgtFactor
        return Schedule("const", base / factor, text=text)
    return Schedule(kind, base, factor, steps, text=text)


def parse_input_shape(text):
    """`C,H,W` (the --input flag) as a tuple of three positive ints, or ConfigError."""
    shape = parse_chw(text, "3,32,32")
    if shape[1] != shape[2]:
        raise ConfigError(f"--input {text}: cuda-convnet's images are square (H = W)")
    return shape


# ---- the conversion ---------------------------------------------------------------------

def convert(layers_path, params_path, input_shape, name=None, epochs=None):
    """Convert a cuda-convnet layer-definition file and its layer-parameter file.

    input_shape: (C, H, W) of one image (cuda-convnet took it from its data provider).
    Returns a Conversion; raises ConvertError (a ConfigError) naming file, line, section, key.
    """
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    return _Converter(layers_path, params_path, tuple(input_shape)).run(name, epochs)



class _Converter:
    def __init__(self, layers_path, params_path, input_shape):
        self.layers_path, self.params_path = layers_path, params_path
        self.input_shape = input_shape
        self.defs = read_ini(layers_path)
        self.params = {s.name: s for s in read_ini(params_path)}
        self.out = []             # Converted, in order
        self.carrier = {}         # cuda-convnet name -> our layer carrying its output
        self.shapes = {}          # cuda-convnet name -> output shape
        self.gpus = {}            # cuda-convnet name -> column
        self.replicas = {}        # cuda-convnet name -> cc2 data-parallel replica count
        self.cc_types = {}        # cuda-convnet name -> type
        self.labels = set()       # data layers that hold the labels
        self.dropped = {}         # spelled key -> [section names]
        self.notices = []
        self.conn_rng = None      # randSparse's generator, made at the first randSparse layer

    # ---- driver -------------------------------------------------------------------------
    def run(self, name, epochs):
        self._find_labels_and_unused()
        for sec in self.defs:
            self._layer(sec)
        if not any(s.raw("type").startswith("cost.") for s in self.defs):
            raise ConvertError("no cost layer (cost.logreg or cost.sum2): nothing to train",
                               file=self.layers_path)
        for sec in self.defs:
            for key in sec.unused():
                sec.fail(key, f"not a key of a cuda-convnet {sec.raw('type')} layer that we can convert")
        for sec in self.params.values():
            if sec.name in self.cc_types:
                for key in sec.unused():
                    sec.fail(key, f"not a params-file key of a cuda-convnet {self.cc_types[sec.name]} "
                                  "layer that we can convert")
        stray = [s.name for s in self.params.values() if s.name not in self.cc_types]
        if stray:
            self.notices.append("params-file sections with no layer, ignored as cuda-convnet "
                                f"ignores them: {', '.join(stray)}")
        train = self._train_settings(epochs)
        self._hybrid_notice()
        if self.dropped:
            listed = "; ".join(f"{k} ({', '.join(v)})" for k, v in self.dropped.items())
            self.notices.insert(0, f"{DROPPED_NOTE}: {listed}")
        net_name = name or os.path.splitext(os.path.basename(self.layers_path))[0]
        num_params = sum(c.params for c in self.out)
        text = emit(net_name, self.input_shape, self.out, train, self._header(num_params) + self.notices)
        check_against_engine(self.out, text, "cuda-convnet")
        return Conversion(text=text, notices=self.notices, layers=self.out, num_params=num_params)

    def _hybrid_notice(self):
        """cc2 runs a layer with fewer replicas than the most replicated ones in several
        smaller passes per minibatch (arXiv:1404.5997, Fig. 2), updating its weights after
        each (updatePeriod <= 1); we run every layer once on the whole batch."""
        most = max(self.replicas.values(), default=1)
        passes = {}
        for c in self.out:
            if c.solver and self.replicas[c.section.name] < most:
                passes.setdefault(most // self.replicas[c.section.name], []).append(c.name)
        for k, names in passes.items():
            self.notices.append(f"approximated: cuda-convnet2 ran {', '.join(names)} in {k} passes of "
                                f"1/{k} of each minibatch (fewer replicas than the {most} of the "
                                f"data-parallel layers), updating their weights after each pass; here "
                                "every layer sees the whole batch in one pass and is updated once")

    def _find_labels_and_unused(self):
        consumed, seen = set(), set()
        for sec in self.defs:
            t = sec.raw("type", None)
            if t is None:
                sec.fail(None, "no type given (type=...)")
            if t != "data":
                for inp in self._input_names(sec):
                    if inp not in seen:
                        sec.fail("inputs", f"input layer '{inp}' is not defined above this section "
                                           "(cuda-convnet needs layers in order)")
                    consumed.add(inp)
                if t == "cost.logreg":
                    self.labels.add(self._input_names(sec)[0])
            seen.add(sec.name)
        for sec in self.defs:
            if not sec.raw("type").startswith("cost.") and sec.name not in consumed:
                sec.fail(None, f"layer of type '{sec.raw('type')}' is unused: no layer reads it")

    @staticmethod
    def _input_names(sec):
        return [v.strip() for v in sec.raw("inputs").split(",")]

    def _drop(self, sec, key):
        """Accept a kernel-tuning key and list it in the notice."""
        sec.used.add(key)
        self.dropped.setdefault(sec.spelled(key), []).append(sec.name)

    def _params_section(self, sec, required=True):
        p = self.params.get(sec.name)
        if p is None and required:
            raise ConvertError(f"a {sec.raw('type')} layer needs a [{sec.name}] section in the params "
                               f"file {self.params_path}", file=sec.file, line=sec.line, layer=sec.name)
        return p

    # ---- one section ----------------------------------------------------------------------
    def _layer(self, sec):
        t = sec.raw("type")
        self.cc_types[sec.name] = t
        if t in UNSUPPORTED_TYPES:
            sec.fail("type", f"cuda-convnet's '{t}' ({UNSUPPORTED_TYPES[t]}) layer has no equivalent here")
        if t not in HANDLERS:
            sec.fail("type", f"unknown cuda-convnet layer type '{t}'")
        handler = getattr(self, HANDLERS[t])
        if t == "data":
            self._data(sec)
            return
        if sec.name == "data":
            sec.fail(None, "'data' is our input layer's name: rename this section (and its inputs= uses)")
        names = self._input_names(sec)
        for inp in names:
            if inp in self.labels and t != "cost.logreg":
                sec.fail("inputs", f"reads the labels '{inp}': only cost.logreg may")
        gpu = self._gpu(sec, names)
        self.gpus[sec.name] = gpu
        if t.startswith("cost."):
            handler(sec, names, gpu)
            return
        neuron = self._neuron_key(sec, "neuron", sec.raw("neuron", "")) if t != "neuron" else None
        layer = handler(sec, names, gpu)
        if layer is None:          # a layer that does nothing (disabled dropout, identity neuron)
            if neuron is not None:
                sec.fail("neuron", "a neuron on a layer that does nothing here is not supported")
            self.carrier[sec.name] = self.carrier[names[0]]
            self.shapes[sec.name] = self.shapes[names[0]]
            return
        self._add(layer)
        self.carrier[sec.name] = layer.name
        self.shapes[sec.name] = layer.shape
        if neuron is not None:
            self._attach_neuron(layer, neuron)

    def _add(self, layer):
        check_layer(layer, f"cuda-convnet's '{layer.section.raw('type')}'")
        self.out.append(layer)

    def _attach_neuron(self, layer, fn):
        """Fused where our type has a `neuron` key; otherwise cuda-convnet's own way, a
        separate `<name>_neuron` layer that the consumers read instead."""
        cls = layer_types.get(layer.type)
        if "neuron" in cls.keys:
            layer.set("neuron", fn, "neuron")
            check_key(layer, cls, "neuron")
            # shown beside the geometry, before the init and solver keys
            init = {k: layer.cfg.pop(k) for k in ("init_w", "init_b") if k in layer.cfg}
            layer.cfg.update(init)
            return
        name = self._unused_name(f"{layer.name}_neuron")
        extra = Converted(name=name, type="neuron", inputs=[layer.name], gpu=layer.gpu,
                          section=layer.section, shape=layer.shape)
        extra.set("fn", fn, "neuron")
        self._add(extra)
        self.carrier[layer.section.name] = name

    def _unused_name(self, wish):
        taken = {c.name for c in self.out} | {s.name for s in self.defs}
        if wish not in taken:
            return wish
        return next(f"{wish}.{i}" for i in range(1, len(taken) + 2) if f"{wish}.{i}" not in taken)

    def _neuron_key(self, sec, key, text):
        if not text:
            return None
        try:
            return parse_neuron(text)
        except ValueError as e:
            sec.fail(key, str(e))

    def _gpu(self, sec, names):
        """Our column: gpu= (the first GPU of a data-parallel replica list), or the first
        input's column. The replica count is kept, inherited the same way, as cc2 does."""
        if not sec.has("gpu"):
            self.replicas[sec.name] = self.replicas.get(names[0], 1)
            return self.gpus.get(names[0], 0)
        gpus = sec.any_length("gpu", int, "a GPU index or a list of them")
        self.replicas[sec.name] = len(gpus)
        if len(gpus) > 1:
            self.notices.append(f"{sec.name}: gpu={sec.raw('gpu')} (data-parallel replicas) runs as one "
                                f"column on gpu {gpus[0]}: the same arithmetic on one device")
        if not 0 <= gpus[0] <= MAX_COLUMN:
            sec.fail("gpu", f"our nets have columns gpu 0..{MAX_COLUMN}; got {gpus[0]}")
        return gpus[0]

    def _inputs(self, sec, names, spatial):
        """Our input names and the cuda-convnet shapes of each input."""
        shapes = [self.shapes[n] for n in names]
        if spatial:
            for n, s in zip(names, shapes):
                if len(s) != 3:
                    sec.fail("inputs", f"input '{n}' is flat ({s[0]} values) but a "
                                       f"{sec.raw('type')} layer here needs images: cuda-convnet "
                                       "reshaped them by `channels`, we have no reshape")
        return [self.carrier[n] for n in names], shapes

    def _check_channels(self, sec, channels, shapes, names):
        for c, s, n in zip(channels, shapes, names):
            if c != s[0]:
                sec.fail("channels", f"says {c} but input '{n}' has {s[0]} channels ({'x'.join(map(str, s))})")

    def _new(self, sec, our_type, inputs, gpu, shape, params=0):
        return Converted(name=sec.name, type=our_type, inputs=inputs, gpu=gpu, section=sec,
                         shape=None if shape is None else tuple(shape), params=params)

    # ---- layer types (named after cuda-convnet's types) -----------------------------------
    def _data(self, sec):
        sec.int("dataidx")
        if sec.name in self.labels:
            for key in ("start", "end"):
                if sec.has(key):
                    sec.int(key)
            return
        if "data" in self.carrier.values():
            sec.fail(None, "a second image data layer: our nets have one input, `data`")
        total = math.prod(self.input_shape)
        start, end = sec.int("start", 0), sec.int("end", total)
        if (start, end) != (0, total):
            sec.fail("start" if start else "end", f"start={start}, end={end} slices the data; we take the "
                                                  f"whole image ({total} values for --input "
                                                  f"{','.join(map(str, self.input_shape))})")
        self.carrier[sec.name] = "data"
        self.shapes[sec.name] = self.input_shape
        self.gpus[sec.name] = 0

    def _weight_layer_common(self, sec, n):
        for key in ("initwfunc", "initbfunc", "initcfunc"):
            if sec.raw(key, ""):
                sec.fail(key, "Python initialisation functions are not supported: weights are "
                              "drawn from N(0, initW) and biases set to initB")
        sources = sec.list("weightsource", n, str, "layer names", default="")
        if any(sources):
            sec.fail("weightsource", "shared weight matrices (weightSource) are not supported")
        init_w = sec.same("initw", sec.list("initw", n, float, "a number", default=0.01),
                          "our layer has one init_w")
        return init_w, sec.float("initb", 0.0)

    def _conv(self, sec, names, gpu, local=False):
        our_names, shapes = self._inputs(sec, names, spatial=True)
        n = len(names)
        channels = sec.list("channels", n, int, "an integer")
        self._check_channels(sec, channels, shapes, names)
        sizes = sec.list("filtersize", n, int, "an integer")
        paddings = sec.list("padding", n, int, "an integer", default=0)
        strides = sec.list("stride", n, int, "an integer", default=1)
        groups = sec.list("groups", n, int, "an integer", default=1)
        filters = sec.list("filters", n, int, "an integer")
        init_w, init_b = self._weight_layer_common(sec, n)
        for key, values in (("filtersize", sizes), ("padding", paddings), ("stride", strides)):
            sec.same(key, values, "our layer joins its inputs along channels under one kernel geometry")
        k, p, s = sizes[0], paddings[0], strides[0]
        if min(k, s) < 1 or p < 0:
            sec.fail("filtersize" if k < 1 else "stride" if s < 1 else "padding", "must be positive")
        if n > 1 and max(groups) > 1:
            sec.fail("groups", "groups on a layer with several inputs: cuda-convnet groups each input's "
                               "channels on its own, our joined input would group across them")
        g = groups[0]
        sets = self._sparse_keys(sec, n, channels[0], g)
        if sets is None and any(c % g for c in channels):
            sec.fail("channels", f"{channels[0]} channels are not divisible by groups={g}")
        total_filters = sec.same("filters", [f * g for f in filters], "cuda-convnet requires the same "
                                 "output from every input")
        sides = {sh[1] for sh in shapes}
        if len(sides) > 1:
            sec.fail("inputs", f"inputs of different sizes ({', '.join(str(sh[1]) for sh in shapes)}): "
                               "our layer joins them along channels")
        side = shapes[0][1]
        if k > side + 2 * p:
            sec.fail("filtersize", f"filter size {k} is larger than the image ({side}) plus 2 x padding {p}")
        modules_x = 1 + -(-(2 * p + side - k) // s)          # 1 + ceil((2p + in - size) / stride)
        given = sec.int("modulesx", 0)
        if given and given != modules_x:
            sec.fail("modulesx", f"modulesX={given} differs from cuda-convnet's own grid ({modules_x})")
        if sec.has("modulesx"):
            self._drop(sec, "modulesx")
        modules = modules_x * modules_x
        weights = (len(sets[0]) * k * k if sets else sum(c // g * k * k for c in channels)) * total_filters
        shared = not local and sec.bool("sharedbiases", True)
        if local:
            weights *= modules
        else:
            for key in ("sharedbiases", "partialsum", "sumwidth"):
                if sec.has(key) and (key != "sharedbiases" or shared):     # sharedBiases=1: our default
                    if key != "sharedbiases":
                        sec.int(key)
                    self._drop(sec, key)
        # sharedBiases=0 and local: one bias per filter and output position (modules*filters x 1
        # in cuda-convnet, filter-major: our [filters, OH, OW])
        biases = total_filters if shared else modules * total_filters
        layer = self._new(sec, "local" if local else "conv", our_names, gpu,
                          (total_filters, modules_x, modules_x), weights + biases)
        layer.set("filters", total_filters, "filters")
        layer.set("size", k, "filtersize")
        if s != 1:
            layer.set("stride", s, "stride")
        if p:
            layer.set("padding", p, "padding")
        end = (modules_x - 1) * s + k - (side + 2 * p)      # zeros the last window reads past the edge
        if end > 0:
            layer.set("padding_end", end, "padding")
        if g != 1:
            layer.set("groups", g, "groups")
        if sets:
            if local:
                sec.fail("randsparse", "random sparse connectivity on a local layer is not supported "
                                       "(our local layer has no channel_sets)")
            layer.set("channel_sets", sets, "randsparse")
        if not local and not shared:
            layer.set("shared_biases", False, "sharedbiases")
        self._set_init(layer, init_w, init_b)
        layer.solver = self._weight_params(sec, n, conv=not local)
        return layer

    def _local(self, sec, names, gpu):
        return self._conv(sec, names, gpu, local=True)

    def _sparse_keys(self, sec, n, channels, groups):
        """randSparse's channel sets (one list of filterChannels channels per group), drawn by
        cuda-convnet's rule and checked by its checks; None without randSparse."""
        if not any(sec.list("randsparse", n, _ini_bool, "true or false", default=False)):
            for key in ("randsparse", "filterchannels"):      # filterChannels only matters with randSparse
                if sec.has(key):
                    self._drop(sec, key)
            return None
        if groups == 1:
            sec.fail("randsparse", "random sparse connectivity needs groups > 1 (cuda-convnet's rule)")
        fc = sec.list("filterchannels", n, int, "an integer", default=channels // groups)[0]
        if fc < 1 or channels % fc or fc % 4 or (groups * fc) % channels:
            sec.fail("filterchannels", f"filterChannels={fc} must divide channels ({channels}), be divisible "
                                       f"by 4, and groups * filterChannels ({groups * fc}) must be a multiple "
                                       "of channels (cuda-convnet's rules)")
        if self.conn_rng is None:
            self.conn_rng = np.random.RandomState(RAND_SPARSE_SEED)
        conns = [int(c) for _ in range(groups * fc // channels) for c in self.conn_rng.permutation(channels)]
        self.notices.append(f"{sec.name}: randSparse's channel sets (filterChannels={fc}) drawn by cuda-convnet's "
                            f"rule with numpy.random.RandomState({RAND_SPARSE_SEED}) and written as channel_sets")
        return [conns[i * fc:(i + 1) * fc] for i in range(groups)]

    def _set_init(self, layer, init_w, init_b):
        layer.set("init_w", init_w, "initw")
        if init_b:
            layer.set("init_b", init_b, "initb")

    def _fc(self, sec, names, gpu):
        our_names, shapes = self._inputs(sec, names, spatial=False)
        outputs = sec.int("outputs")
        if outputs < 1:
            sec.fail("outputs", "must be >= 1")
        init_w, init_b = self._weight_layer_common(sec, len(names))
        params = sum(math.prod(s) for s in shapes) * outputs + outputs
        layer = self._new(sec, "fc", our_names, gpu, (outputs,), params)
        layer.set("outputs", outputs, "outputs")
        self._set_init(layer, init_w, init_b)
        layer.solver = self._weight_params(sec, len(names))
        return layer

    def _one_input(self, sec, names, spatial):
        if len(names) != 1:
            sec.fail("inputs", f"a cuda-convnet {sec.raw('type')} layer has exactly one input")
        our_names, shapes = self._inputs(sec, names, spatial)
        return our_names, shapes[0]

    def _pool(self, sec, names, gpu):
        our_names, shape = self._one_input(sec, names, spatial=True)
        self._check_channels(sec, [sec.int("channels")], [shape], names)
        mode = sec.raw("pool")
        if mode not in ("max", "avg"):
            sec.fail("pool", f"pool={mode}: we have max and avg pooling"
                             if mode == "maxabs" else f"must be max or avg, got {mode!r}")
        size, stride = sec.int("sizex"), sec.int("stride")
        side = shape[1]
        if not 1 <= size <= side:
            sec.fail("sizex", f"must be in the range 1-{side} (the input size)")
        if not 1 <= stride <= size:
            sec.fail("stride", f"must be in the range 1-{size} (sizeX)")
        if sec.int("start", 0) != 0:
            sec.fail("start", "a pooling grid that does not start at the image's corner is not supported")
        if sec.bool("sum", False):
            sec.fail("sum", "sum pooling (avg without the division) is not supported")
        outputs_x = -(-(side - size) // stride) + 1         # ceil((in - sizeX) / stride) + 1
        given = sec.int("outputsx", 0)
        if given and given != outputs_x:
            sec.fail("outputsx", f"outputsX={given} differs from the automatic {outputs_x}, the only "
                                 "grid we support")
        layer = self._new(sec, "pool", our_names, gpu, (shape[0], outputs_x, outputs_x))
        layer.set("mode", mode, "pool")
        layer.set("size", size, "sizex")
        layer.set("stride", stride, "stride")
        return layer

    def _norm(self, sec, names, gpu, our_type):
        our_names, shape = self._one_input(sec, names, spatial=True)
        self._check_channels(sec, [sec.int("channels")], [shape], names)
        size_key = "size" if sec.has("size") or not sec.has("sizex") else "sizex"   # old cc1: sizeX
        size = sec.int(size_key)
        if sec.bool("blocked", False):
            sec.fail("blocked", "blocked cross-map normalisation (fixed blocks of maps) is not supported")
        old_style = sec.has("scale") or sec.has("pow")        # cc1 before June 2012: in this file
        p = sec if old_style else self._params_section(sec)
        if our_type == "cmrnorm" and not 2 <= size <= shape[0]:
            sec.fail(size_key, f"must be in the range 2-{shape[0]} (the channels)")
        if our_type != "cmrnorm" and not 1 <= size <= shape[1]:
            sec.fail(size_key, f"must be in the range 1-{shape[1]} (the image size)")
        layer = self._new(sec, our_type, our_names, gpu, shape)
        layer.set("size", size, size_key)
        # the same formula as ours: x / (minDiv + scale/size(^2) * sum u^2)^pow; cc1 fixes minDiv = 1
        layer.set("alpha", p.float("scale"), "scale", p)
        layer.set("beta", p.float("pow"), "pow", p)
        layer.set("k", p.float("mindiv", 1.0), "mindiv", p)
        return layer

    def _rnorm(self, sec, names, gpu):
        return self._norm(sec, names, gpu, "rnorm")

    def _cnorm(self, sec, names, gpu):
        return self._norm(sec, names, gpu, "cnorm")

    def _cmrnorm(self, sec, names, gpu):
        return self._norm(sec, names, gpu, "cmrnorm")

    def _neuron(self, sec, names, gpu):
        our_names, shape = self._one_input(sec, names, spatial=False)
        fn = self._neuron_key(sec, "neuron", sec.raw("neuron"))
        if fn is None:
            return None
        layer = self._new(sec, "neuron", our_names, gpu, shape)
        layer.set("fn", fn, "neuron")
        return layer

    def _softmax(self, sec, names, gpu):
        our_names, shape = self._one_input(sec, names, spatial=False)
        return self._new(sec, "softmax", our_names, gpu, (math.prod(shape),))

    def _same_size_inputs(self, sec, names, least):
        if len(names) < least:
            sec.fail("inputs", f"needs at least {least} inputs")
        our_names, shapes = self._inputs(sec, names, spatial=False)
        sizes = {math.prod(s) for s in shapes}
        if len(sizes) > 1:
            sec.fail("inputs", "all inputs must have the same size, got "
                               + ", ".join('x'.join(map(str, s)) for s in shapes))
        return our_names, shapes[0]

    def _eltsum(self, sec, names, gpu):
        our_names, shape = self._same_size_inputs(sec, names, 1)
        p = self.params.get(sec.name)
        source = p if p is not None and p.has("coeffs") else sec     # cc2: params file; cc1: here
        coeffs = source.list("coeffs", len(names), float, "a number", default=1.0)
        layer = self._new(sec, "eltsum", our_names, gpu, shape)
        if any(c != 1.0 for c in coeffs):
            layer.set("coeffs", coeffs, "coeffs", source)
        return layer

    def _eltmax(self, sec, names, gpu):
        our_names, shape = self._same_size_inputs(sec, names, 2)
        return self._new(sec, "eltmax", our_names, gpu, shape)

    def _concat(self, sec, names, gpu):
        our_names, shapes = self._inputs(sec, names, spatial=False)
        if all(len(s) == 3 and s[1:] == shapes[0][1:] for s in shapes):
            return self._new(sec, "concat", our_names, gpu,
                             (sum(s[0] for s in shapes),) + tuple(shapes[0][1:]))
        layer = self._new(sec, "concat", our_names, gpu, (sum(math.prod(s) for s in shapes),))
        layer.set("mode", "flat", "inputs")      # cuda-convnet joins flat vectors whatever they hold
        return layer

    def _pass(self, sec, names, gpu):        # cc2's zero-copy concatenation: the same numbers
        return self._concat(sec, names, gpu)

    def _dropout_common(self, sec, names, gpu, keep_in_defs=False):
        our_names, shape = self._one_input(sec, names, spatial=False)
        p = self._params_section(sec, required=not keep_in_defs)
        keep = (sec if keep_in_defs else p).float("keep", 0.5)
        enable = p.bool("enable", True) if p is not None else True
        if not 0.0 < keep <= 1.0:
            (sec if keep_in_defs else p).fail("keep", f"must be in (0, 1], got {keep}")
        if not enable:
            self.notices.append(f"{sec.name}: enable=0, a dropout layer that does nothing: left out")
            return None, keep
        return self._new(sec, "dropout", our_names, gpu, shape), keep

    def _dropout(self, sec, names, gpu):
        """cc2 `dropout`: inverted (kept units x 1/keep in training), as our `dropout`."""
        layer, keep = self._dropout_common(sec, names, gpu)
        if layer is not None:
            layer.set("rate", 1.0 - keep, "keep", self.params[sec.name])
        return layer

    def _dropout2(self, sec, names, gpu, keep_in_defs=False):
        """cc2 `dropout2` (and AlexNet-2012's `hs`): classic, x keep at test time."""
        layer, keep = self._dropout_common(sec, names, gpu, keep_in_defs)
        if layer is not None:
            layer.type = "dropout2"
            layer.set("keep", keep, "keep", sec if keep_in_defs else self.params[sec.name])
        return layer

    def _hs(self, sec, names, gpu):
        return self._dropout2(sec, names, gpu, keep_in_defs=True)

    def _cost_common(self, sec, n_inputs):
        if sec.has("children") and sec.raw("children"):
            sec.fail("children", "aggregated child costs are not supported")
        sec.raw("children", None)
        if len(self._input_names(sec)) != n_inputs:
            sec.fail("inputs", f"a {sec.raw('type')} layer has exactly {n_inputs} input(s)")
        return self._params_section(sec)

    def _cost_logreg(self, sec, names, gpu):
        """Folded into the softmax it reads: our softmax is the net's output and its cost."""
        p = self._cost_common(sec, 2)
        if self.cc_types.get(names[0]) != "data":
            sec.fail("inputs", f"the first input must be the labels' data layer, not '{names[0]}'")
        probs = names[1]
        carrier = [c for c in self.out if c.name == self.carrier[probs]]
        if self.cc_types.get(probs) != "softmax" or not carrier or carrier[0].type != "softmax":
            sec.fail("inputs", f"the second input '{probs}' must be a softmax layer")
        if p.float("coeff") != 1.0:
            p.fail("coeff", "a cost weight other than 1 is not supported (scale epsW/epsB instead)")
        topk = p.int("topk", 1)
        if p.has("topk"):
            self.notices.append(f"{sec.name}: topk={topk} dropped (`python -m engine test` reports "
                                "top-1 and top-5 errors)")
        self.carrier[sec.name] = carrier[0].name

    def _cost_sum2(self, sec, names, gpu):
        p = self._cost_common(sec, 1)
        our_names, shapes = self._inputs(sec, names, spatial=False)
        layer = self._new(sec, "sum2", our_names, gpu, None)     # its output: the cost
        layer.set("coeff", p.float("coeff"), "coeff", p)
        self._add(layer)

    # ---- learning parameters -------------------------------------------------------------
    def _weight_params(self, sec, n, conv=False):
        p = self._params_section(sec)
        same = "our layer has one value for all its inputs"

        def schedule(text, key):
            try:
                return parse_schedule(text)
            except ValueError as e:
                p.fail(key, str(e))

        # per input: a rate and a momentum per input's part of the weight (lr_w, mom_w lists)
        eps_w = [schedule(t, "epsw") for t in p.list("epsw", n, str, "a rate")]
        p.same("epsw", [e.shape for e in eps_w if e.base > 0] or [None], "the inputs' schedules differ in "
               "kind: we run one schedule, scaled per input")
        eps_b = schedule(p.raw("epsb"), "epsb")
        mom_w = p.list("momw", n, float, "a number")
        mom_b = p.float("momb")
        wc = p.same("wc", p.list("wc", n, float, "a number", default=0.0), same)
        for key in ("wball",) + (("wcnormmin", "wcnormmax") if conv else ()):
            if any(p.list(key, n, float, "a number", default=0.0)):
                p.fail(key, {"wball": "the max-norm weight constraint (wball) is not supported"}.get(
                    key, "filter-norm constraints are not supported"))
        if p.has("updateperiod"):
            if p.int("updateperiod") > 1:
                p.fail("updateperiod", "updates every several passes (hybrid parallelism) are not supported")
            self._drop(p, "updateperiod")
        for key in ("supereps", "supermom"):     # parsed by cc2, used nowhere
            if p.has(key):
                p.float(key)
                self._drop(p, key)
        return {"epsw": eps_w, "epsb": eps_b, "momw": mom_w, "momb": mom_b, "wc": wc, "section": p}

    def _train_settings(self, epochs):
        weighted = [c for c in self.out if c.solver]
        train = {}
        if epochs is not None:
            train["epochs"] = epochs
        if not weighted:
            return train
        # every layer's epsW, a layer with per-input rates counting each of its distinct ones once
        rates = [e for c in weighted for e in {(e.base, e.shape): e for e in c.solver["epsw"]}.values()]
        moving = [e for e in rates if e.base > 0] or rates
        shape = Counter(e.shape for e in moving).most_common(1)[0][0]
        lr = Counter(e.base for e in moving if e.shape == shape).most_common(1)[0][0]
        if lr <= 0:
            raise ConvertError("every layer is frozen (epsW=0): nothing to train", file=self.params_path)
        # the net's momentum: the most common momW; a layer whose momW differs gets mom_w
        momentum = Counter(m for c in weighted for m in dict.fromkeys(c.solver["momw"])).most_common(1)[0][0]
        for c in weighted:
            if c.solver["momb"] != momentum:
                c.solver["section"].fail("momb", f"{c.solver['momb']} differs from the momentum {momentum} "
                                                 "of the weights: we have one momentum for all biases")
            moms = c.solver["momw"]
            if any(m != momentum for m in moms):
                c.solver["mom_w"] = moms[0] if len(set(moms)) == 1 else moms
        decays = Counter(c.solver["wc"] for c in weighted if c.solver["wc"] > 0)
        weight_decay = decays.most_common(1)[0][0] if decays else 0.0
        approximated = {}
        for c in weighted:
            for key, ours in (("epsw", "lr_w"), ("epsb", "lr_b")):
                scheds = c.solver[key] if key == "epsw" else [c.solver[key]]
                for sched in scheds:
                    if sched.base > 0 and sched.shape != shape:
                        spelled = c.solver["section"].spelled(key)
                        approximated.setdefault(f"{spelled}={sched.text}", []).append(c.name)
                mults = [sched.base / lr for sched in scheds]
                c.solver[ours] = mults[0] if len(set(mults)) == 1 else mults
            c.solver["wd"] = c.solver["wc"] / weight_decay if weight_decay else 1.0
        train.update(lr=lr, momentum=momentum, weight_decay=weight_decay)
        kind, factor, steps = shape
        if kind == "const":
            train["schedule"] = "constant"
        else:
            train["schedule"] = {"type": kind, "factor": factor, **({"steps": steps} if steps else {})}
            if epochs is None:
                self.notices.append(f"the {kind} schedule runs over train.epochs (default 10): set it "
                                    "to cuda-convnet's --epochs (convert --epochs N, or in the file)")
        if approximated:
            listed = "; ".join(f"{k} on {', '.join(v)}" for k, v in approximated.items())
            self.notices.append(f"approximated: we run one learning-rate schedule for the whole net "
                                f"({schedule_text(train['schedule'])}, from epsW), so these follow it, "
                                f"scaled to their base rate: {listed}")
        return train

    # ---- output --------------------------------------------------------------------------
    def _header(self, num_params):
        c, h, w = self.input_shape
        return [
            "Converted by `python -m engine convert` from cuda-convnet files:",
            f"  layers: {self.layers_path}",
            f"  params: {self.params_path}",
            f"input {c}x{h}x{w} (--input {c},{h},{w}); {num_params:,} parameters, as in cuda-convnet",
        ]
