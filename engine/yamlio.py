"""YAML reading with line numbers kept, so errors can point at the line (safe_load only)."""
import yaml

from engine.errors import ConfigError


class Mapping(dict):
    """A dict that remembers the line of itself (`line`) and of each key (`lines[key]`)."""
    line = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines = {}


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out = Mapping()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ConfigError(f"duplicate key '{key}'", line=key_node.start_mark.line + 1, key=str(key))
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
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
        msg = f"YAML syntax error: {e.problem or e.context}"
        raise ConfigError(msg, file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", file=file) from None


def line_of(mapping, key=None):
    """Best line for `key` in `mapping` (or the mapping itself)."""
    if isinstance(mapping, Mapping):
        if key is not None and key in mapping.lines:
            return mapping.lines[key]
        return mapping.line
    return None
