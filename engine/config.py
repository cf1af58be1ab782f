"""Net files: read the YAML, check every key, and describe each layer as a `LayerSpec`.

Only the shape of the text is checked here (names, kinds, ranges, wiring names);
shapes are checked when the graph builds the layers (engine.graph).
"""
import difflib
import os
from dataclasses import dataclass, field

import layers as layer_types
from layers.base import INT_MAX, Key, LayerError, shown

from engine import plugins as plugin_files
from engine.errors import ConfigError
from engine.yamlio import Mapping, line_of, parse

TOP_KEYS = {
    "name": "the net's name",
    "description": "free text",
    "input": "{shape: [C, H, W]}: one image; the input layer is called `data`",
    "defaults": "values for any layer key not given on the layer",
    "layers": "the list of layers",
    "blocks": "named layer templates with parameters, used in `layers` as {name: N, block: B, ...}",
    "train": "training settings (see README: Training)",
    "plugins": "Python files or modules with your own layer types (needs plugins=True / --plugins)",
}

# Keys every layer takes, whatever its type.
COMMON_KEYS = {
    "name": Key(str, doc="unique layer name"),
    "type": Key(str, doc="layer type"),
    "inputs": Key(list, None, doc="names of input layers; default: the previous layer"),
    "gpu": Key(int, 0, low=0, high=7, doc="column (lane: a CPU thread, a CUDA stream or device) 0..7"),
}


class PerInputKey(Key):
    """A number, or a list of numbers with one per input of the layer (parse checks the count)."""

    def check(self, key, value):
        if isinstance(value, list):
            if not value:
                raise LayerError(key, "an empty list: give a number, or a list with one per input")
            return [super(PerInputKey, self).check(key, v) for v in value]
        return super().check(key, value)

    def describe(self):
        return super().describe() + "; or a list, one per input"


# Keys of layers with parameters: per-layer multipliers of the solver's rates (cuda-convnet's
# epsW/epsB/wc/momW relative to the net-wide values; engine/solver.py applies them).
PARAM_KEYS = {
    "lr_w": PerInputKey(float, 1.0, low=0.0, doc="learning-rate multiplier for the weights; a list: one "
                        "per input, for that input's part of the weight (cuda-convnet's per-input epsW)"),
    "lr_b": Key(float, 1.0, low=0.0, doc="learning-rate multiplier for the biases"),
    "wd": Key(float, 1.0, low=0.0, doc="weight-decay multiplier for the weights"),
    "mom_w": PerInputKey(float, None, low=0.0, high=0.999999, doc="the weights' momentum in place of "
                         "train.momentum (sgd, nesterov; adam ignores it); a list: one per input "
                         "(cuda-convnet's per-input momW)"),
}
# Keys of cost layers: the cost's weight in the net's loss (cuda-convnet's coeff), unless the
# type declares its own `coeff` (sum2 applies it inside its cost).
COST_KEYS = {
    "coeff": Key(float, 1.0, low=0.0, low_open=True, doc="weight of this cost in the net's loss"),
}
INPUT_NAME = "data"
MAX_NAME = 200            # layer names: long enough for any net, short enough for one-line errors


@dataclass
class LayerSpec:
    name: str
    type: str
    inputs: list
    gpu: int
    cfg: dict                 # the layer type's own keys, validated, defaults filled in
    solver: dict              # lr_w, lr_b, wd (only meaningful for layers with parameters)
    mapping: Mapping = None   # the YAML mapping, for line numbers
    origins: dict = field(default_factory=dict)  # key -> (mapping, key) it came from
    set_by: dict = field(default_factory=dict)   # key -> the override that set it ("--set ...")
    coeff: float = 1.0        # a cost layer's weight in the loss the engine applies (COST_KEYS)

    def line(self, key=None):
        if key is not None and key in self.origins:
            m, k = self.origins[key]
            line = line_of(m, k)
        else:
            line = line_of(self.mapping, key)
        if key in self.set_by:       # later errors (shapes, wiring) name the override too
            return SetLine(line or 0, self.set_by[key])
        return line


class SetLine(int):
    """A line number that also names the override that set the key, so an error reads
    `nets/x.yaml:12 (--set conv1.size=99): layer 'conv1', key 'size': ...`; still the int."""

    def __new__(cls, line, label):
        self = super().__new__(cls, line)
        self.label = label
        return self

    def __bool__(self):
        return True

    def __str__(self):
        return f"{int(self)} ({self.label})" if int(self) else self.label

    def __format__(self, spec):
        return format(str(self), spec)


@dataclass
class NetSpec:
    name: str
    input_shape: tuple
    layers: list
    train: dict
    file: str = None
    text: str = None          # the net file's text (stored with checkpoints)
    data: dict = None
    plugins: list = field(default_factory=list)   # absolute plugin paths or module names
    plugin_dir: str = None    # the absolute folder relative plugin paths resolve against
    overrides: list = field(default_factory=list)  # "LAYER.KEY=VALUE" texts applied to the net
    #                           (layers and input; stored with checkpoints beside the net text)
    train_overrides: dict = field(default_factory=dict)  # train keys set by `train.KEY=VALUE`


def named(value):
    """A name or key as a message shows it: as written when plain printable text, else a
    short repr (so a message stays one line whatever the file holds)."""
    if isinstance(value, str) and value.isprintable() and len(value) <= 80:
        return value
    return shown(value)


def suggest(word, options):
    close = difflib.get_close_matches(str(word), sorted(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_source(source):
    """(data, file, text) from a path, YAML text or a dict."""
    if isinstance(source, dict):
        return source, None, None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and (source.endswith((".yaml", ".yml")) or os.path.isfile(source))):
        path = os.fspath(source)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read net file: {e.strerror}", file=path) from None
        except ValueError as e:        # a NUL in the path
            raise ConfigError(f"cannot read net file: {e}", file=shown(path)) from None
        return parse(text, file=path), path, text
    if isinstance(source, str):
        return parse(source), None, source
    raise ConfigError(f"a net is a path to a .yaml file, YAML text or a dict, not {type(source).__name__}")


# ---- overrides: `--set LAYER.KEY=VALUE` ------------------------------------------------
SECTIONS = ("input", "train")     # `input.shape=...`, `train.KEY=...`; any other name is a layer
SET_FORM = "LAYER.KEY=VALUE, train.KEY=VALUE or input.shape=[C,H,W]"


@dataclass(frozen=True)
class Override:
    text: str        # "fc8.outputs=5": what the checkpoint stores
    label: str       # "--set fc8.outputs=5": how errors name it
    path: tuple      # ("fc8", "outputs"), ("train", "augment", "flip"), ("input", "shape")
    value: object


@dataclass(frozen=True)
class Overridden:
    """A net source (a path, YAML text or a dict) with overrides to apply when it is parsed:
    anything that takes a net source and calls parse_net (engine.load, the tools) takes it."""
    source: object
    overrides: tuple


def with_overrides(source, overrides):
    """`source` with `overrides` (see parse_net) to apply when parsed; `source` itself when
    there are none. Checks the overrides' form at once (ConfigError)."""
    overrides = normalize_overrides(overrides)
    return Overridden(source, tuple(overrides)) if overrides else source


def _split_path(key, label):
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{label}: expected {SET_FORM}")
    if parts[0] in SECTIONS:
        return tuple(parts)
    return (key.rsplit(".", 1)[0], parts[-1])     # a layer name may hold dots: the key is last


def normalize_overrides(overrides, cli=True):
    """A list of Override from None, an Override list, {"fc8.outputs": 5} (values as given),
    or "fc8.outputs=5" texts (one or a list; VALUE read with yaml.safe_load, as in a net
    file). `cli`: texts are named `--set TEXT` in errors, else as saved in a checkpoint."""
    import yaml
    if overrides is None:
        return []
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, dict):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise ConfigError(f"overrides: a key is a 'LAYER.KEY' string, got {shown(key)}")
            label = f"override {named(key)}={shown(value)}"
            out.append(Override(f"{key}={_as_text(value)}", label, _split_path(key, label), value))
        return out
    out = []
    for item in overrides:
        if isinstance(item, Override):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise ConfigError(f"overrides: expected '{SET_FORM}' texts or a dict, got {shown(item)}")
        label = f"--set {named(item)}" if cli else f"override {named(item)} (saved in the checkpoint)"
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"{label}: expected {SET_FORM} (no '=')")
        path = _split_path(key.strip(), label)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{label}: the value is not valid YAML: "
                              f"{' '.join(str(getattr(e, 'problem', None) or e).split())}") from None
        out.append(Override(f"{key.strip()}={text.strip()}", label, path, value))
    return out


def _as_text(value):
    """A value as YAML flow text that reads back as itself ("5", "relu", "[3, 64, 64]")."""
    import json
    if isinstance(value, str):
        import yaml
        try:
            plain = "\n" not in value and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _copy(mapping):
    """A shallow copy that keeps a Mapping's line numbers (the caller's data stays untouched)."""
    if isinstance(mapping, Mapping):
        out = Mapping(mapping)
        out.line, out.lines, out.used = mapping.line, dict(mapping.lines), mapping.used
        return out
    return dict(mapping)


def apply_overrides(data, overrides, types, file=None, marked=None):
    """(a copy of the parsed net `data` with `overrides` applied, {train key: its new value}).

    Checked like the file: an unknown layer or key, a value of the wrong kind or out of
    range is a ConfigError naming the override (`--set fc8.outptus=5: unknown key ...`).
    `marked` gets (id(mapping), key) -> label for each key set, so later checks (shapes,
    wiring) name the override instead of a line of the file."""
    from engine import settings as settings_mod     # settings imports this module
    marked = {} if marked is None else marked
    if not overrides or not isinstance(data, dict):
        return data, {}
    data = _copy(data)
    train_new = {}

    def err(o, msg):
        raise ConfigError(f"{o.label}: {msg}", file=file)

    for o in overrides:
        head, rest = o.path[0], o.path[1:]
        if head == "input":
            if rest != ("shape",):
                err(o, f"the input section has one key, shape: write input.shape=[C,H,W]"
                    f"{suggest(rest[-1], ['shape']) if len(rest) == 1 else ''}")
            inp = data.get("input")
            inp = _copy(inp) if isinstance(inp, dict) else Mapping()
            inp["shape"] = o.value
            data["input"] = inp
            marked[(id(inp), "shape")] = o.label
        elif head == "train":
            train = data.get("train")
            train = _copy(train) if isinstance(train, dict) else Mapping()
            key = rest[0]
            if key not in settings_mod.TRAIN_KEYS:
                err(o, f"unknown key '{named(key)}' of the train section{suggest(key, settings_mod.TRAIN_KEYS)}; "
                    f"valid: {', '.join(settings_mod.TRAIN_KEYS)}")
            if len(rest) == 1:
                value = _override_value(o, settings_mod.TRAIN_KEYS[key], key, file)
            else:
                sub_keys = {"augment": settings_mod.AUGMENT_KEYS, "schedule": settings_mod.SCHEDULE_KEYS}.get(key)
                if sub_keys is None or len(rest) != 2:
                    err(o, f"train.{key} takes no sub-keys: write train.{key}=VALUE")
                sub = rest[1]
                if sub not in sub_keys:
                    err(o, f"unknown key '{named(sub)}' of train.{key}{suggest(sub, sub_keys)}; "
                        f"valid: {', '.join(sub_keys)}")
                old = train.get(key)
                if isinstance(old, str) and key == "schedule":
                    old = {"type": old}
                value = _copy(old) if isinstance(old, dict) else Mapping()
                value[sub] = _override_value(o, sub_keys[sub], sub, file)
            train[key] = value
            train_new[key] = value
            data["train"] = train
            marked[(id(train), key)] = o.label
        else:
            _override_layer(data, o, types, file, marked, err)
    return data, train_new


def _override_value(o, key_spec, key, file):
    def key_err(msg, _key):
        raise ConfigError(f"{o.label}: {msg}", file=file)
    if key_spec.kind in (dict, list):
        ok = isinstance(o.value, key_spec.kind) or o.value is None or (key == "schedule" and isinstance(o.value, str))
        if not ok:
            key_err(f"must be a {key_spec.kind.__name__}, got {shown(o.value)}", key)
        return o.value
    return _check_value(key_spec, key, o.value, key_err)


def _override_layer(data, o, types, file, marked, err):
    name, key = o.path
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list):
        return           # the file's own error comes next
    names = [r.get("name") for r in raw_layers if isinstance(r, dict)]
    if name not in names:
        listed = [n for n in names if isinstance(n, str)]
        err(o, f"no layer named '{named(name)}'{suggest(name, listed + list(SECTIONS))}; layers: "
            f"{', '.join(listed)} (and the sections input, train)")
    if key == "name":
        err(o, "a layer's name cannot be set (other layers' inputs name it)")
    i = next(i for i, r in enumerate(raw_layers) if isinstance(r, dict) and r.get("name") == name)
    raw = raw_layers[i]
    type_name = o.value if key == "type" else raw.get("type")
    cls = types.get(type_name) if isinstance(type_name, str) else None
    if cls is not None:
        valid = {k: v for k, v in valid_keys(cls).items() if k != "name"}
        if key not in valid:
            err(o, f"unknown key '{named(key)}' of layer '{named(name)}' (a {type_name} layer)"
                f"{suggest(key, valid)}; valid: {', '.join(valid)}")
        if key not in ("type", "inputs"):
            _override_value(o, valid[key], key, file)
    layer = _copy(raw)
    layer[key] = o.value
    layers = list(raw_layers)
    layers[i] = layer
    data["layers"] = layers
    marked[(id(layer), key)] = o.label


def valid_keys(cls):
    """Every key a layer of type `cls` takes: the common ones, its own, and the engine's keys
    for layers with weights (PARAM_KEYS) and for cost layers (COST_KEYS)."""
    valid = dict(COMMON_KEYS)
    valid.update(cls.keys)
    if "init_w" in cls.keys:    # weight layers declare an init_w
        valid.update(PARAM_KEYS)
    if cls.is_cost:
        valid.update({k: v for k, v in COST_KEYS.items() if k not in cls.keys})
    return valid


def output_layer(spec):
    """The layer whose `outputs` sets how many classes the net tells apart (the last fc
    before the softmax: fc8 in AlexNet), or None: followed back from the net's last layer
    through layers that keep the shape (softmax, dropout, neuron, ...)."""
    by_name = {s.name: s for s in spec.layers}
    s = spec.layers[-1] if spec.layers else None
    seen = set()
    while s is not None and s.name not in seen:
        seen.add(s.name)
        if "outputs" in s.cfg:
            return s
        if len(s.inputs) != 1:
            return None
        s = by_name.get(s.inputs[0])
    return None


def class_count_message(spec, data_classes, data_name, net_classes, where=None):
    """The message for data with `data_classes` classes and a net with `net_classes` outputs:
    names the file, the line and the layer, and gives the `--set` that fixes it."""
    where = where or spec.file
    layer = output_layer(spec)
    if layer is None:
        place = f"{where}: " if where else ""
        return (f"{place}the data ({data_name}) has {data_classes} classes but the net's output has "
                f"{net_classes}: make the layer that sets its size give {data_classes}")
    line = layer.line("outputs")
    place = f"{where}:{line}: " if where and line else f"{where}: " if where else ""
    in_file = f" in {where}" if where else ""
    return (f"{place}layer '{layer.name}' has outputs: {layer.cfg['outputs']}, but the data ({data_name}) has "
            f"{data_classes} classes: add --set {layer.name}.outputs={data_classes} to the command "
            f"(or overrides={{'{layer.name}.outputs': {data_classes}}} in Python), or set "
            f"`outputs: {data_classes}` on layer '{layer.name}'{in_file}")


def _check_value(key_spec, key, value, err):
    if key_spec.kind is list:
        return value
    if value is None and not key_spec.required and key_spec.default is None:
        return None
    try:
        return key_spec.check(key, value)
    except LayerError as e:
        raise err(e.message, key) from None


def parse_net(source, plugins=False, plugin_dir=None, overrides=None):
    """A NetSpec from a path to a .yaml file, YAML text or a dict; any problem -> ConfigError.

    `plugins`: allow the net's `plugins` (Python files or modules defining layer types) to
    be imported. `plugin_dir`: the folder relative plugin paths resolve against (default: the
    net file's folder; for text or a dict, the current directory); for net text saved in a
    checkpoint, the original net file's folder (parse_checkpoint_net does that).
    `overrides`: values that replace the file's (the command line's `--set`), applied to the
    parsed YAML before it is checked: {"fc8.outputs": 5, "train.epochs": 3} or
    ["fc8.outputs=5", "train.epochs=3", "input.shape=[3,64,64]"] (VALUE read as YAML); see
    `apply_overrides`. A `source` made by `with_overrides` carries its own.
    """
    if isinstance(source, Overridden):
        overrides = list(source.overrides) + list(normalize_overrides(overrides))
        source = source.source
    overrides = normalize_overrides(overrides)
    data, file, text = read_source(source)
    marked = {}       # (id(mapping), key) -> the override that set it: errors name it, not a line

    def fail(msg, mapping=None, key=None, layer=None, line=None):
        label = marked.get((id(mapping), key))
        if label is not None:       # the override names the layer and key
            raise ConfigError(f"{label}: {msg}", file=file)
        raise ConfigError(msg, file=file, line=line or line_of(mapping, key), layer=layer,
                          key=None if key is None else named(key))

    if isinstance(data, str) and file is None and "\n" not in data.strip():
        fail(f"no such net file: {shown(data)} (a net is a path to a .yaml file, YAML text or a dict)")
    if not isinstance(data, dict):
        fail(f"a net file is a mapping with keys {', '.join(TOP_KEYS)}; got {type(data).__name__}")
    for k in data:
        if k not in TOP_KEYS:
            fail(f"unknown top-level key{suggest(k, TOP_KEYS)}; valid: {', '.join(TOP_KEYS)}", data, k)
    for k in ("input", "layers"):
        if k not in data:
            fail(f"missing required top-level key '{k}'", data, None, line=line_of(data))
    name = data.get("name", os.path.splitext(os.path.basename(file))[0] if file else "net")
    if not isinstance(name, str) or not name.isprintable():
        fail(f"must be a string of printable characters, got {shown(name)}", data, "name")

    plugin_dir = os.path.abspath(plugin_dir or (os.path.dirname(file) if file else os.curdir))
    resolved, types = _plugins(data, plugins, plugin_dir, fail)
    # overrides of the layers as written (block uses too) before blocks expand, of expanded
    # layers (res2a.conv1.filters) after
    from engine import blocks
    written = blocks.raw_names(data)
    early = [o for o in overrides if o.path[0] in SECTIONS or o.path[0] in written]
    data, train_overrides = apply_overrides(data, early, types, file, marked)
    data, block_outputs = blocks.expand(data, fail, marked)
    data, _ = apply_overrides(data, [o for o in overrides if o not in early], types, file, marked)
    blocks.resolve_outputs(data, block_outputs, marked)
    input_shape = _input_shape(data, fail)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        fail("must be a mapping of layer keys to values", data, "defaults")
    train = data.get("train") or {}
    if not isinstance(train, dict):
        fail("must be a mapping (see README: Training)", data, "train")

    raw_layers = data["layers"]
    if not isinstance(raw_layers, list) or not raw_layers:
        fail("must be a non-empty list of layers", data, "layers")

    all_type_keys = set(COMMON_KEYS) | set(PARAM_KEYS) | set(COST_KEYS)
    for cls in types.values():
        all_type_keys |= set(cls.keys)
    for k in defaults:
        if k in ("name", "type", "inputs"):
            fail("cannot have a default", defaults, k)
        if k not in all_type_keys:
            fail(f"no layer type has this key{suggest(k, all_type_keys)}", defaults, k)

    specs, seen = [], {}
    previous = INPUT_NAME
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            fail(f"layer #{i + 1} must be a mapping with at least `name` and `type`, got {shown(raw)}",
                 data, "layers")
        spec = _parse_layer(raw, i, previous, defaults, fail, seen, types)
        spec.set_by = {k: marked[(id(raw), k)] for k in raw if (id(raw), k) in marked}
        seen[spec.name] = spec.line("name")
        specs.append(spec)
        previous = spec.name
    return NetSpec(name=name, input_shape=input_shape, layers=specs, train=train,
                   file=file, text=text, data=data, plugins=resolved, plugin_dir=plugin_dir,
                   overrides=[o.text for o in overrides if o.path[0] != "train"],
                   train_overrides=train_overrides)


def parse_checkpoint_net(meta, plugins=False, overrides=None):
    """The NetSpec of the net text a checkpoint saved (`meta`: its JSON, with "path"): its
    plugins resolve against the original net file's folder, the overrides it was trained
    with (meta "overrides") are applied again, then `overrides`; errors name the net file
    as saved in the checkpoint."""
    stored = meta.get("overrides") or []
    if not isinstance(stored, list) or not all(isinstance(t, str) for t in stored):
        stored = []           # not written by this engine: the net text alone
    try:
        return parse_net(meta["net_text"], plugins=plugins, plugin_dir=plugin_files.checkpoint_dir(meta),
                         overrides=normalize_overrides(stored, cli=False) + normalize_overrides(overrides))
    except ConfigError as e:
        if e.file is not None:
            raise
        saved = f"saved in {meta.get('path', 'the checkpoint')}"
        where = f"{meta['net_file']} ({saved})" if meta.get("net_file") else f"the net text {saved}"
        raise ConfigError(e.message, file=where, line=e.line, layer=e.layer, key=e.key) from None


def _plugins(data, allowed, plugin_dir, fail):
    """(the net's plugins resolved, {type: class} of the layer types this net may use):
    the built-in ones, any registered in code, and its own plugins' (not other nets')."""
    resolved = []
    if "plugins" in data and data["plugins"] is not None:
        def plugin_fail(msg):
            fail(msg, data, "plugins")
        entries = plugin_files.check_entries(data["plugins"], plugin_fail)
        resolved = [plugin_files.resolve(e, plugin_dir) for e in entries]
        if resolved and not allowed:
            plugin_files.refuse(resolved, plugin_fail)
        own = plugin_files.load(resolved, plugin_fail)
    else:
        own = {}
    types = {t: cls for t, cls in layer_types.REGISTRY.items()
             if plugin_files.owner(t) is None or t in own}
    return resolved, types


def _input_shape(data, fail):
    inp = data["input"]
    if not isinstance(inp, dict) or "shape" not in inp:
        fail("must be a mapping like {shape: [3, 224, 224]}", data, "input")
    for k in inp:
        if k != "shape":
            fail(f"unknown key in input{suggest(k, ['shape'])}; valid: shape", inp, k)
    shape = inp["shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT_MAX for v in shape)):
        fail(f"input shape must be three positive integers [C, H, W] (each <= {INT_MAX:,}), "
             f"got {shown(shape)}", inp, "shape")
    return tuple(shape)


def _parse_layer(raw, index, previous, defaults, fail, seen, types):
    name = raw.get("name")
    if name is None:
        fail(f"layer #{index + 1} has no `name`", raw, "name")
    if not isinstance(name, str) or not name or not name.isprintable() or len(name) > MAX_NAME:
        fail(f"a layer name must be 1 to {MAX_NAME} printable characters, got {shown(name)}", raw, "name")
    if name == INPUT_NAME:
        fail(f"'{INPUT_NAME}' is the input layer's name; choose another", raw, "name", layer=name)
    if name in seen:
        fail(f"duplicate layer name (first defined on line {seen[name]})", raw, "name", layer=name)
    if "type" not in raw:
        fail("missing required key 'type'", raw, None, layer=name)
    type_name = raw["type"]
    if isinstance(type_name, str) and type_name not in types and plugin_files.owner(type_name):
        fail(f"layer type '{type_name}' comes from plugin {plugin_files.owner(type_name)}, which this "
             "net does not name: add it to the net's `plugins`", raw, "type", layer=name)
    if not isinstance(type_name, str) or type_name not in types:
        fail(f"unknown layer type '{named(type_name)}'{suggest(type_name, types)}; "
             f"valid: {' | '.join(sorted(types))}", raw, "type", layer=name)
    cls = types[type_name]
    valid = valid_keys(cls)

    def err(msg, key):
        fail(msg, raw, key, layer=name)

    for k in raw:
        if k not in valid:
            err(f"unknown key for a {type_name} layer{suggest(k, valid)}; valid: {', '.join(valid)}", k)

    inputs = raw.get("inputs", [previous])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) for v in inputs):
        err(f"must be a layer name or a list of layer names, got {shown(inputs)}", "inputs")
    if len(set(inputs)) != len(inputs):
        err(f"lists the same input twice: {shown(inputs)}", "inputs")
    if name in inputs:
        err("a layer cannot read its own output", "inputs")

    cfg, solver, origins = {}, {}, {}
    gpu, coeff = 0, 1.0
    for k, key_spec in valid.items():
        if k in ("name", "type", "inputs"):
            continue
        if k in raw:
            value, origins[k] = raw[k], (raw, k)
        elif k in defaults:
            value, origins[k] = defaults[k], (defaults, k)
        elif key_spec.required:
            err(f"missing required key for a {type_name} layer ({key_spec.doc or key_spec.describe()})", k)
        else:
            value = key_spec.default
        origin_map = origins.get(k, (raw, None))[0]

        def key_err(msg, key, _m=origin_map):
            fail(msg, _m, key, layer=name)
        value = _check_value(key_spec, k, value, key_err)
        if k == "gpu":
            gpu = value
        elif k in PARAM_KEYS:
            if isinstance(value, list) and len(value) != len(inputs):
                key_err(f"a list needs one value per input ({len(inputs)}: {', '.join(inputs)}), "
                        f"got {len(value)}", k)
            solver[k] = value
        elif k in COST_KEYS and k not in cls.keys:
            coeff = value
        else:
            cfg[k] = value
    return LayerSpec(name=name, type=type_name, inputs=list(inputs), gpu=gpu, cfg=cfg,
                     solver=solver, mapping=raw, origins=origins, coeff=coeff)
