"""Layer types from the user's own Python files (Caffe's "Python layer"): a net's `plugins`.

    plugins: [my_layers.py, mypkg.layers]

Each entry is a .py file (relative paths resolve against the net file's folder; for YAML
text or a dict, against the current directory) or an importable module name. Importing it
registers its `Layer` subclasses with `layers.registry.register`, as the built-in types
register themselves. A plugin runs code, so a net naming plugins loads only with the
caller's consent: `plugins=True` in Python, `--plugins` on the command line.

Each plugin is imported once per process, a file under a module name derived from its
absolute path, so loading two nets (or one net twice) that name it re-registers nothing.
"""
import hashlib
import importlib
import importlib.util
import os
import re
import sys

import layers  # noqa: F401 - registers the built-in types before BUILTIN_TYPES is taken
from layers.base import Layer, shown
from layers.registry import REGISTRY, register


MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
BUILTIN_TYPES = frozenset(t for t, cls in REGISTRY.items() if cls.__module__.startswith("layers."))

_types_of = {}      # plugin (absolute path or module name) -> the layer types it registered
_owner = {}         # layer type -> the plugin that registered it


def check_entries(value, fail):
    """The `plugins` value as a list of non-empty strings (a lone string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list)
            or not all(isinstance(v, str) and v.strip() and v.isprintable() for v in value)):
        fail("must be a list of plugin files (my_layers.py) or module names (mypkg.layers), "
             f"got {shown(value)}")
    for v in value:
        if not is_file(v) and not MODULE_NAME.fullmatch(v):
            fail(f"'{v}' is neither a .py file nor a module name (like mypkg.layers)")
    return value


def is_file(entry):
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def resolve(entry, base_dir):
    """The absolute path of a plugin file, or the module name as written."""
    if not is_file(entry):
        return entry
    return os.path.realpath(os.path.join(base_dir, os.path.expanduser(entry)))


def refuse(resolved, fail):
    """The error for a net that names plugins loaded without the caller's consent."""
    noun = "plugin" if len(resolved) == 1 else "plugins"
    fail(f"asks for {noun} {', '.join(resolved)}, which run{'s' if len(resolved) == 1 else ''} "
         "Python code: allow plugins with --plugins on the command line, or plugins=True in Python "
         "(engine.load, Trainer, ...)")


def load(resolved, fail):
    """Import each plugin (once per process); returns {layer type: plugin}."""
    types = {}
    for plugin in resolved:
        if plugin not in _types_of:
            _types_of[plugin] = _import(plugin, fail)
            _owner.update((t, plugin) for t in _types_of[plugin])
        types.update((t, plugin) for t in _types_of[plugin])
    return types


def checkpoint_dir(meta):
    """The folder relative plugin paths in a checkpoint's net text resolve against: the one
    saved with it (`plugin_dir`), else its original net file's folder, else None (the
    current directory)."""
    if meta.get("plugin_dir"):
        return meta["plugin_dir"]
    if meta.get("net_file"):
        return os.path.dirname(os.path.abspath(meta["net_file"]))
    return None


def forget():
    """Unregister every plugin's layer types and forget its import, so the next net that names
    it imports it afresh (a long-lived process whose plugin files changed; tests)."""
    for plugin, types in _types_of.items():
        for t in types:
            REGISTRY.pop(t, None)
        sys.modules.pop(_module_name(plugin) if is_file(plugin) else plugin, None)
    _types_of.clear()
    _owner.clear()


def owner(type_name):
    """The plugin that registered a layer type, or None (a built-in type, or one registered in code)."""
    return _owner.get(type_name)


def _import(plugin, fail):
    if is_file(plugin) and not os.path.isfile(plugin):
        fail(f"plugin file not found: {plugin}")
    before = dict(REGISTRY)
    try:
        module = _import_file(plugin) if is_file(plugin) else importlib.import_module(plugin)
    except (Exception, SystemExit) as e:      # the plugin's own code: anything may come out
        clash = _clashing_type(e)
        _unregister(before)
        if clash is not None:
            fail(_clash_message(plugin, clash))
        where = _line_in(plugin, e)
        fail(f"plugin {plugin} failed to import{where}: {_one_line(e)}")
    new = [t for t in REGISTRY if t not in before]
    new += [t for t, cls in REGISTRY.items() if cls.__module__ == module.__name__ and t not in new]
    bad = [t for t in new if not (isinstance(REGISTRY[t], type) and issubclass(REGISTRY[t], Layer))]
    if bad:
        _unregister(before)
        fail(f"plugin {plugin} registers '{bad[0]}', which is not a Layer subclass (from layers.base)")
    if not new:
        fail(f"plugin {plugin} registers no layer type: decorate a Layer subclass (from layers.base) "
             "with @register (from layers.registry)")
    return tuple(new)


def _module_name(path):
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"engine_plugin_{hashlib.sha1(path.encode()).hexdigest()[:12]}_{stem}"


def _import_file(path):
    name = _module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # as `import` does: the module may look itself up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _unregister(before):
    """Forget what a failed plugin registered, so a fixed file can be imported again."""
    for t in [t for t in REGISTRY if t not in before]:
        del REGISTRY[t]


def _clashing_type(error):
    """The type name when `error` is `register` refusing a name already taken, else None."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code is not register.__code__:
        return None
    return getattr(tb.tb_frame.f_locals.get("cls"), "type", None)


def _clash_message(plugin, type_name):
    first = owner(type_name)
    if type_name in BUILTIN_TYPES:
        taken = "a built-in layer type"
    elif first is not None:
        taken = f"already the type of plugin {first}"
    else:
        taken = "already registered"
    return f"plugin {plugin} registers layer type '{type_name}', which is {taken}: give its class another `type`"


def _line_in(plugin, error):
    """' (line N)': the plugin file's deepest line in the traceback, if any."""
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == plugin:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def _one_line(error):
    text = str(error).strip().splitlines()
    if isinstance(error, SyntaxError):
        text = [error.msg] if error.msg else text
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
