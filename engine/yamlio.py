"""YAML reading with line numbers kept, so errors can point at the line (safe_load only)."""
from collections.abc import Hashable

import yaml
from layers.base import shown

from engine.errors import ConfigError


class Mapping(dict):
    """A dict that remembers the line of itself (`line`) and of each key (`lines[key]`)."""
    line = None

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
    """Best line for `key` in `mapping` (or the mapping itself)."""
    if isinstance(mapping, Mapping):
        if key is not None and key in mapping.lines:
            return mapping.lines[key]
        return mapping.line
    return None
