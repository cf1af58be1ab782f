"""`blocks:`: named layer templates with parameters, expanded into plain layers at load time.

    blocks:
      basic:                                   # a residual block
        params: {width: null, stride: 1}       # null: required at every use
        layers:
          - {name: a, type: conv, filters: $width, size: 3, stride: $stride, padding: 1, neuron: relu}
          - {name: b, type: conv, filters: $width, size: 3, padding: 1}
          - {name: sum, type: eltsum, inputs: [b, $in]}
    layers:
      - {name: res2a, block: basic, width: 64}      # res2a.a, res2a.b, res2a.sum
      - {name: fc, type: fc, outputs: 10, inputs: res2a}   # the block's output: res2a.sum

A use takes `name`, `block`, `inputs` (default: the previous layer), `gpu` (for the block's
layers that set none) and the block's parameters. Its layers are named `<use>.<layer>`;
inside a template, `inputs` name the block's own layers, `$in` the use's inputs and
`$PARAM` a parameter (a layer name from outside); a layer without `inputs` reads the one
before it, the first one `$in`. `$PARAM` as a whole value anywhere else is the parameter's
value. The block's output is its last layer: other layers may name the use for it.
Templates hold plain layers only (no block inside a block).
"""
import re

from layers.base import shown

from engine.config import COMMON_KEYS, INPUT_NAME, named, suggest
from engine.yamlio import Mapping, Use, line_of

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INPUT_REF = "in"
BLOCK_KEYS = ("params", "layers", "description")
USE_KEYS = ("name", "block", "inputs", "gpu")
USE_KEY = {INPUT_REF: "inputs"}     # where a use writes the value of $in


def ref(value):
    """The parameter a value refers to ("$width" -> "width"), or None."""
    if isinstance(value, str) and value.startswith("$") and IDENT.match(value[1:]):
        return value[1:]
    return None


def raw_names(data):
    """The names of the entries of `layers` as written (plain layers and block uses)."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return set()
    return {r.get("name") for r in layers if isinstance(r, dict) and isinstance(r.get("name"), str)}


def expand(data, fail, marked):
    """(data with each block use in `layers` replaced by the block's layers, {use name: the
    name of its last layer}). The data is left as it is when no layer uses a block."""
    layers = data.get("layers")
    if not isinstance(layers, list) or not any(isinstance(r, dict) and "block" in r for r in layers):
        if data.get("blocks") is not None:
            _definitions(data, fail)        # checked even when unused
        return data, {}
    blocks = _definitions(data, fail)
    out, outputs, taken = [], {}, {}
    previous = INPUT_NAME
    for i, raw in enumerate(layers):
        if not (isinstance(raw, dict) and "block" in raw):
            out.append(raw)
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                taken.setdefault(raw["name"], line_of(raw, "name"))
                previous = raw["name"]
            continue
        expanded = _expand_use(raw, i, blocks, previous, fail, marked, taken)
        out.extend(expanded)
        outputs[raw["name"]] = previous = expanded[-1]["name"]
    data = _copy_top(data)
    data["layers"] = out
    return data, outputs


def resolve_outputs(data, outputs, marked):
    """Inputs that name a block use read its last layer (after overrides, which may name uses)."""
    layers = data.get("layers")
    if not outputs or not isinstance(layers, list):
        return
    for i, raw in enumerate(layers):
        if not isinstance(raw, dict) or "inputs" not in raw:
            continue
        inputs = raw["inputs"]
        listed = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(listed, list) or not any(isinstance(v, str) and v in outputs for v in listed):
            continue
        new = _copy_layer(raw)
        new["inputs"] = [outputs.get(v, v) if isinstance(v, str) else v for v in listed]
        for k in raw:                 # the override marks follow the copy
            if (id(raw), k) in marked:
                marked[(id(new), k)] = marked[(id(raw), k)]
        layers[i] = new


# ---- definitions ---------------------------------------------------------------------------
def _definitions(data, fail):
    """{block name: (mapping, {param: default}, [template layer mappings])}, checked."""
    blocks = data.get("blocks")
    if blocks is None:
        blocks = {}
    if not isinstance(blocks, dict):
        fail("must be a mapping of block names to {params: {...}, layers: [...]}", data, "blocks")
    out = {}
    for name, block in blocks.items():
        if not isinstance(name, str) or not IDENT.match(name):
            fail(f"a block name is a plain identifier (letters, digits, _), got {shown(name)}", blocks, name)
        if not isinstance(block, dict):
            fail(f"block '{name}' must be a mapping with `layers` (and `params`), got {shown(block)}",
                 blocks, name)
        for k in block:
            if k not in BLOCK_KEYS:
                fail(f"unknown key of block '{name}'{suggest(k, BLOCK_KEYS)}; valid: {', '.join(BLOCK_KEYS)}",
                     block, k)
        params = block.get("params") or {}
        if not isinstance(params, dict):
            fail(f"the params of block '{name}' are a mapping of names to defaults (null: required)",
                 block, "params")
        for p in params:
            if not isinstance(p, str) or not IDENT.match(p) or p == INPUT_REF or p in USE_KEYS:
                fail(f"a parameter of block '{name}' is a plain identifier other than "
                     f"{', '.join([INPUT_REF, *USE_KEYS])}, got {shown(p)}", params, p)
        templates = block.get("layers")
        if not isinstance(templates, list) or not templates:
            fail(f"block '{name}' needs `layers`: a non-empty list of layers", block, "layers" if "layers"
                 in block else None)
        _check_templates(name, params, templates, block, fail)
        out[name] = (block, params, templates)
    return out


def _check_templates(block_name, params, templates, block, fail):
    own = {}
    for i, t in enumerate(templates):
        if not isinstance(t, dict):
            fail(f"layer #{i + 1} of block '{block_name}' must be a mapping with at least `name` and `type`, "
                 f"got {shown(t)}", block, "layers")
        name = t.get("name")
        if not isinstance(name, str) or not name or not name.isprintable() or ref(name):
            fail(f"layer #{i + 1} of block '{block_name}' needs a `name`: plain printable text "
                 f"(no $parameter), got {shown(name)}", t, "name" if "name" in t else None)
        if name in own:
            fail(f"duplicate layer name in block '{block_name}' (first defined on line {own[name]})",
                 t, "name", layer=name)
        own[name] = line_of(t, "name")
        if "block" in t:
            fail(f"a block's layers are plain layers: block '{block_name}' cannot use a block", t, "block",
                 layer=name)
        for k, v in t.items():
            for p in _refs(v):
                if p != INPUT_REF and p not in params:
                    valid = ", ".join(f"${q}" for q in [*params, INPUT_REF])
                    fail(f"${p} is not a parameter of block '{block_name}'"
                         f"{suggest(p, [*params, INPUT_REF]).replace(chr(39), chr(39) + '$', 1)}; "
                         f"valid: {valid}", t, k, layer=name)
                if p == INPUT_REF and k != "inputs":
                    fail("$in (the block's input) is a layer name: only `inputs` take it", t, k, layer=name)
    for t in templates:                 # own layers may come in any order (the graph sorts them)
        inputs = t.get("inputs")
        for v in ([inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []):
            if isinstance(v, str) and ref(v) is None and v not in own:
                fail(f"block '{block_name}' has no layer '{named(v)}'{suggest(v, own)}; its layers: "
                     f"{', '.join(own)} (the use's input is $in; a layer from outside comes in through a "
                     "parameter: inputs: [..., $PARAM])", t, "inputs", layer=t["name"])


def _refs(value):
    """Every parameter named in a value (nested lists and mappings too)."""
    if isinstance(value, list):
        return [p for v in value for p in _refs(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _refs(v)]
    p = ref(value)
    return [p] if p else []


# ---- one use -------------------------------------------------------------------------------
def _expand_use(use, index, blocks, previous, fail, marked, taken):
    name = use.get("name")
    if name is None:
        fail(f"layer #{index + 1} has no `name`", use, "name")
    if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 150:
        fail(f"a block use's name must be 1 to 150 printable characters, got {shown(name)}", use, "name")
    if name == INPUT_NAME:
        fail(f"'{INPUT_NAME}' is the input layer's name; choose another", use, "name", layer=name)
    if name in taken:
        fail(f"duplicate layer name (first defined on line {taken[name]})", use, "name", layer=name)
    taken[name] = line_of(use, "name")
    block_name = use["block"]
    if not isinstance(block_name, str) or block_name not in blocks:
        where = (f"; blocks: {', '.join(blocks)}" if blocks else "; the net has no `blocks:` section")
        fail(f"unknown block {shown(block_name)}{suggest(block_name, blocks)}{where}", use, "block", layer=name)
    block, params, templates = blocks[block_name]
    defined = f"block '{block_name}' (defined at line {line_of(block)})" if line_of(block) else f"block '{block_name}'"
    for k in use:
        if k not in USE_KEYS and k not in params:
            if k in COMMON_KEYS or k == "type":
                hint = f"a block use takes {', '.join(USE_KEYS)} and the block's parameters"
            else:
                hint = f"its parameters: {', '.join(params) or 'none'}"
            fail(f"{defined} has no parameter '{named(k)}'{suggest(k, list(params))}; {hint}",
                 use, k, layer=name)
    values = {}
    for p, default in params.items():
        if p in use:
            values[p] = use[p]
            _check_kind(p, use[p], default, defined, use, fail, name)
        elif default is None:
            fail(f"{defined} needs parameter '{p}' (it has no default)", use, None, layer=name)
        else:
            values[p] = default
    inputs = use.get("inputs", [previous])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) for v in inputs):
        fail(f"must be a layer name or a list of layer names, got {shown(inputs)}", use, "inputs", layer=name)
    values[INPUT_REF] = inputs

    def use_line(key):
        label = marked.get((id(use), key))
        line = line_of(use, key)
        if label is not None:
            from engine.config import SetLine
            return SetLine(line or 0, label)
        return line

    own = {t["name"] for t in templates}
    out, last = [], None
    for t in templates:
        key_lines = {k: use_line(written) for k, v in t.items() for p in _refs(v)
                     for written in [USE_KEY.get(p, p)] if written in use}
        layer = Mapping()
        layer.line, layer.lines = getattr(t, "line", None), dict(getattr(t, "lines", {}))
        layer.used = Use(block_name, line_of(use), key_lines, name=name)
        for k, v in t.items():
            if k == "name":
                layer[k] = f"{name}.{v}"
            elif k == "inputs":
                layer[k] = _inputs(v, own, name, values)
            else:
                layer[k] = _substitute(v, values)
        if "inputs" not in t:
            layer["inputs"] = list(inputs) if last is None else [last]
        if "gpu" in use and "gpu" not in t:
            layer["gpu"] = use["gpu"]
            layer.used.key_lines["gpu"] = use_line("gpu")
        last = layer["name"]
        out.append(layer)
    return out


def _check_kind(p, value, default, defined, use, fail, name):
    """A value given at a use must be of its default's kind (a number where a number is)."""
    if default is None or value is None:
        return
    kinds = ((bool,), (int, float), (str,), (list,), (dict,))
    want = next(k for k in kinds if isinstance(default, k)) if any(isinstance(default, k) for k in kinds) else None
    if want is None:
        return
    ok = isinstance(value, want) and not (bool not in want and isinstance(value, bool))
    if not ok:
        kind = {bool: "true/false", int: "a number", str: "text", list: "a list", dict: "a mapping"}[want[0]]
        fail(f"parameter '{p}' of {defined} takes {kind} like its default {shown(default)}, got {shown(value)}",
             use, p, layer=name)


def _inputs(value, own, prefix, values):
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list):
        return _substitute(value, values)       # the layer's own check says what is wrong
    out = []
    for v in listed:
        p = ref(v)
        if p is not None:
            got = values[p]
            out.extend(got if isinstance(got, list) else [got])
        elif isinstance(v, str) and v in own:
            out.append(f"{prefix}.{v}")
        else:
            out.append(v)
    return out


def _substitute(value, values):
    p = ref(value)
    if p is not None:
        return values[p]
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    if isinstance(value, dict):
        out = Mapping() if isinstance(value, Mapping) else {}
        if isinstance(value, Mapping):
            out.line, out.lines = value.line, dict(value.lines)
        out.update((k, _substitute(v, values)) for k, v in value.items())
        return out
    return value


def _copy_top(data):
    out = Mapping(data)
    out.line, out.lines = getattr(data, "line", None), dict(getattr(data, "lines", {}))
    return out


def _copy_layer(raw):
    out = Mapping(raw)
    out.line, out.lines = getattr(raw, "line", None), dict(getattr(raw, "lines", {}))
    out.used = getattr(raw, "used", None)
    return out
