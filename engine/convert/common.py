"""What both converters share: the error type and one converted layer of ours.

A `Converted` layer remembers where each of its keys came from (`origin`): the source
file's section or layer (any object with `name`, `values` and `fail(key, message)`) and the
key there, so an error found later (by our engine, by the shared checks) points at the
line of the original file.
"""
from dataclasses import dataclass, field

from engine.config import COMMON_KEYS
from engine.errors import ConfigError

MAX_COLUMN = COMMON_KEYS["gpu"].high      # our nets' columns: gpu 0..MAX_COLUMN


def parse_chw(text, example):
    """`C,H,W` (the --input flag) as a tuple of three positive ints, or ConfigError."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input must be C,H,W (three positive integers, e.g. {example}), got {text!r}")
    return shape


class ConvertError(ConfigError):
    """A file we cannot convert (cuda-convnet .cfg, Caffe .prototxt): file, line, layer and key."""


@dataclass
class Converted:
    """One layer of ours: its YAML keys, and its shape and parameter count by the source's rules."""
    name: str
    type: str
    inputs: list
    gpu: int
    section: object                                 # where it came from: .name, .values, .fail(key, msg)
    shape: tuple = None
    params: int = 0
    cfg: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)      # our key -> (section, source key) it came from
    solver: dict = None                             # weight layers: lr_w, lr_b, wd and the source's values

    def set(self, key, value, cc_key, section=None):
        self.cfg[key] = value
        self.origin[key] = (section or self.section, cc_key)

    def fail(self, key, message):
        """An error at the source key (in whichever file) that our `key` came from."""
        section, cc_key = self.origin.get(key, (self.section, key if key in self.section.values else None))
        section.fail(cc_key, message)


@dataclass
class Conversion:
    text: str                 # the YAML net
    notices: list             # one line each, for the user
    layers: list              # Converted, in file order
    num_params: int
