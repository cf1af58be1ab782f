"""YAML reading with line numbers kept, so errors can point at the line (safe_load only)."""
from collections.abc import Hashable

import yaml
from layers.base import shown

from engine.errors import ConfigError


class Mapping(dict):
    """A dict that remembers the line of itself (`line`) and of each key (`lines[key]`).
    A layer expanded from a block template (engine.blocks) also has `used`: its `Use`."""
    line = None
    used = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines = {}


class _LineLoader(yaml.SafeLoader):
    pass


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader, node):
    own = sum(k.tag != MERGE_TAG for k, _ in node.value)
    loader.flatten_mapping(node)           # puts merged (`<<: *anchor`) pairs first
    merged = len(node.value) - own
    out, written = Mapping(), set()
    out.line = node.start_mark.line + 1
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, Hashable):
            raise ConfigError(f"a mapping key must be a plain value, not a {type(key).__name__}", line=line)
        if i >= merged:       # written here: twice is an error; over a merged key, an override
            if key in written:
                plain = isinstance(key, str) and key.isprintable()
                raise ConfigError(f"duplicate key {shown(key)}", line=line, key=key if plain else shown(key))
            written.add(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse(text, file=None):
    """Parse YAML text into plain data whose mappings are `Mapping`s; errors -> ConfigError."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(e.message, file=file, line=e.line, key=e.key) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        msg = "YAML syntax error: " + " ".join(str(e.problem or e.context).split())
        raise ConfigError(msg, file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {' '.join(str(e).split())}", file=file) from None
    except RecursionError:
        raise ConfigError("YAML nested too deeply", file=file) from None
    except (ValueError, TypeError, OverflowError) as e:   # a constructor's, e.g. date 2020-99-99
        raise ConfigError(f"YAML value error: {' '.join(str(e).split())}", file=file) from None


def line_of(mapping, key=None):
    """Best line for `key` in `mapping` (or the mapping itself); for a layer expanded from a
    block, the template's line that also names the use (a `BlockLine`)."""
    if isinstance(mapping, Mapping):
        line = mapping.lines[key] if key is not None and key in mapping.lines else mapping.line
        return line if mapping.used is None else mapping.used.line(line, key)
    return None


class Use:
    """Where a block was used: its name, the use's line, and the use's line of each key whose
    value came from a parameter written at the use."""

    def __init__(self, block, line, key_lines=None, name=None):
        self.block, self.at, self.key_lines, self.name = block, line, dict(key_lines or {}), name

    def line(self, line, key=None):
        used_at = self.key_lines.get(key, self.at)
        if line is None and used_at is None:
            return None
        return BlockLine(line or 0, self.block, used_at)


class BlockLine(int):
    """A line of a block's template that also names the use, so an error reads
    `net.yaml:5 (in block 'basic' used at line 12): layer 'res2a.a', ...`; still the int."""

    def __new__(cls, line, block, used_at):
        self = super().__new__(cls, line)
        self.block, self.used_at = block, used_at
        return self

    def __bool__(self):
        return True

    def __str__(self):
        where = f"in block '{self.block}'" + (f" used at line {self.used_at}" if self.used_at else "")
        return f"{int(self)} ({where})" if int(self) else f"({where})"

    def __format__(self, spec):
        return format(str(self), spec)
