"""The one exception type for every problem in a net definition."""


class ConfigError(ValueError):
    """A problem in a net definition, located by file, line, layer and key.

    `str(err)` reads like `nets/x.yaml:12: layer 'conv1', key 'size': must be >= 1, got 0`.
    In a layer expanded from a block, `line` is the template's and `block` / `used_at` name the
    block and the line of its use: `nets/x.yaml:5 (in block 'basic' used at line 12): ...`.
    """

    def __init__(self, message, file=None, line=None, layer=None, key=None):
        self.message, self.file, self.line, self.layer, self.key = message, file, line, layer, key
        self.block, self.used_at = getattr(line, "block", None), getattr(line, "used_at", None)
        super().__init__(self._text())

    def _text(self):
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        elif self.line:
            where = f"line {self.line}: "
        what = []
        if self.layer:
            what.append(f"layer '{self.layer}'")
        if self.key:
            what.append(f"key '{self.key}'")
        return where + (", ".join(what) + ": " if what else "") + self.message


class DeviceError(RuntimeError):
    """CUDA asked for where there is none (a one-line message for the user)."""


class MemoryLimitError(MemoryError):
    """A batch (or a net) that cannot fit in the memory available, refused before allocating.

    `needed` and `available` are bytes; `largest_batch` is the largest batch size that fits
    (0 when not even one image does, None where it does not apply).
    """

    def __init__(self, message, needed=None, available=None, largest_batch=None):
        super().__init__(message)
        self.needed, self.available, self.largest_batch = needed, available, largest_batch
