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
# Keys of layers with parameters: per-layer multipliers of the solver's rates (cuda-convnet's
# epsW/epsB/wc relative to the net-wide values).
PARAM_KEYS = {
    "lr_w": Key(float, 1.0, low=0.0, doc="learning-rate multiplier for the weights"),
    "lr_b": Key(float, 1.0, low=0.0, doc="learning-rate multiplier for the biases"),
    "wd": Key(float, 1.0, low=0.0, doc="weight-decay multiplier for the weights"),
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

    def line(self, key=None):
        if key is not None and key in self.origins:
            m, k = self.origins[key]
            return line_of(m, k)
        return line_of(self.mapping, key)


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


def _check_value(key_spec, key, value, err):
    if key_spec.kind is list:
        return value
    if value is None and not key_spec.required and key_spec.default is None:
        return None
    try:
        return key_spec.check(key, value)
    except LayerError as e:
        raise err(e.message, key) from None


def parse_net(source, plugins=False, plugin_dir=None):
    """A NetSpec from a path to a .yaml file, YAML text or a dict; any problem -> ConfigError.

    `plugins`: allow the net's `plugins` (Python files or modules defining layer types) to
    be imported. `plugin_dir`: the folder relative plugin paths resolve against (default: the
    net file's folder; for text or a dict, the current directory); for net text saved in a
    checkpoint, the original net file's folder (parse_checkpoint_net does that).
    """
    data, file, text = read_source(source)

    def fail(msg, mapping=None, key=None, layer=None, line=None):
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

    all_type_keys = set(COMMON_KEYS) | set(PARAM_KEYS)
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
        seen[spec.name] = spec.line("name")
        specs.append(spec)
        previous = spec.name
    return NetSpec(name=name, input_shape=input_shape, layers=specs, train=train,
                   file=file, text=text, data=data, plugins=resolved, plugin_dir=plugin_dir)


def parse_checkpoint_net(meta, plugins=False):
    """The NetSpec of the net text a checkpoint saved (`meta`: its JSON, with "path"): its
    plugins resolve against the original net file's folder, and errors name the net file
    as saved in the checkpoint."""
    try:
        return parse_net(meta["net_text"], plugins=plugins, plugin_dir=plugin_files.checkpoint_dir(meta))
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
    has_params = "init_w" in cls.keys   # weight layers declare an init_w
    valid = dict(COMMON_KEYS)
    valid.update(cls.keys)
    if has_params:
        valid.update(PARAM_KEYS)

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
    gpu = 0
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
            solver[k] = value
        else:
            cfg[k] = value
    return LayerSpec(name=name, type=type_name, inputs=list(inputs), gpu=gpu, cfg=cfg,
                     solver=solver, mapping=raw, origins=origins)
