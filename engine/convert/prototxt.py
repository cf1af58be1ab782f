"""The protobuf text format (Caffe's .prototxt files), read without protobuf or Caffe.

    name: "AlexNet"                      # a comment
    layer {                              # a message: `key { ... }`, `key: { ... }` or `key < ... >`
      name: 'conv1'  type: "Convolution" # strings in either quote, adjacent ones joined
      bottom: "data"                     # a field given twice is a repeated field
      convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
      param { lr_mult: 1 } param { lr_mult: 2 }
    }
    input_shape { dim: [10, 3, 227, 227] }   # the list form of a repeated field

Values are kept as written (a string, a number's text, or an identifier: an enum value or
true/false) with their line; the typed getters of `Message` convert them and raise
ConvertError naming the file, line, layer and field. No schema is known here: which fields
exist, and whether they may repeat, is the converter's business (`Message.unused()` lists
the fields nobody asked for).
"""
import re

from engine.convert.common import ConvertError

MISSING = object()

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![\w.]))
  | (?P<ident>-?[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "?": "?"}
_BOOLS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}


class Scalar:
    """One value as written: kind 'string' (text unquoted), 'number' or 'ident' (text as written)."""
    __slots__ = ("kind", "text", "line")

    def __init__(self, kind, text, line):
        self.kind, self.text, self.line = kind, text, line

    def shown(self):
        return repr(self.text) if self.kind == "string" else self.text


class Message:
    """A message: its fields in file order as (name, value, line), value a Scalar or a Message.

    `layer` names the Caffe layer it belongs to (set on the layer, found by the nested
    messages through `parent`) so errors can name it; `path` is the field path from the layer
    (`convolution_param.kernel_size`)."""

    def __init__(self, file, line, key=None, parent=None):
        self.file, self.line, self.key, self.parent = file, line, key, parent
        self.fields = []
        self.used = set()
        self.layer = None

    # ---- errors -------------------------------------------------------------------------------
    def owner(self):
        m = self
        while m is not None and m.layer is None:
            m = m.parent
        return None if m is None else m.layer

    def path(self, key=None):
        parts, m = [], self
        while m is not None and m.layer is None and m.key is not None:
            parts.append(m.key)
            m = m.parent
        parts = parts[::-1] + ([key] if key else [])
        return ".".join(parts) or None

    def fail(self, key, message, line=None):
        """ConvertError at the field `key` (its first line) or, with key None, at this message."""
        if line is None:
            line = self.line_of(key)
        raise ConvertError(message, file=self.file, line=line, layer=self.owner(), key=self.path(key))

    def line_of(self, key=None):
        for name, _, line in self.fields:
            if name == key:
                return line
        return self.line

    # ---- reading ----------------------------------------------------------------------------
    @property
    def values(self):
        """The field names (the Converted.fail interface: which keys exist here)."""
        return {name for name, _, _ in self.fields}

    def has(self, key):
        return any(name == key for name, _, _ in self.fields)

    def all(self, key):
        """Every value of a (repeated) field, in order."""
        self.used.add(key)
        return [v for name, v, _ in self.fields if name == key]

    def one(self, key, default=MISSING):
        values = self.all(key)
        if not values:
            if default is MISSING:
                self.fail(None, f"missing required field '{self.path(key)}'")
            return default
        if len(values) > 1:
            self.fail(key, f"given {len(values)} times; it takes one value", line=values[1].line)
        return values[0]

    def message(self, key, default=MISSING):
        v = self.one(key, default)
        if v is default:
            return v
        if not isinstance(v, Message):
            self.fail(key, f"must be a message `{key} {{ ... }}`, got {v.shown()}", line=v.line)
        return v

    def messages(self, key):
        out = self.all(key)
        for v in out:
            if not isinstance(v, Message):
                self.fail(key, f"must be a message `{key} {{ ... }}`, got {v.shown()}", line=v.line)
        return out

    def _scalar(self, key, v, kinds, what):
        if isinstance(v, Message) or v.kind not in kinds:
            shown = "a message" if isinstance(v, Message) else v.shown()
            self.fail(key, f"must be {what}, got {shown}", line=v.line)
        return v

    def convert(self, key, v, kind):
        """A Scalar as kind: int, float, str, bool or 'enum' (an identifier)."""
        if kind == "str":
            return self._scalar(key, v, ("string",), "a string in quotes").text
        if kind == "enum":
            return self._scalar(key, v, ("ident",), "a name (an enum value)").text
        if kind == "bool":
            v = self._scalar(key, v, ("ident", "number"), "true or false")
            if v.text.lower() not in _BOOLS:
                self.fail(key, f"must be true or false, got {v.text}", line=v.line)
            return _BOOLS[v.text.lower()]
        if kind == "int":
            v = self._scalar(key, v, ("number",), "an integer")
            text = v.text.lower()
            if re.fullmatch(r"[-+]?\d+", text):
                return int(text, 10)
            if re.fullmatch(r"[-+]?0x[0-9a-f]+", text):
                return int(text, 16)
            self.fail(key, f"must be an integer, got {v.text}", line=v.line)
        v = self._scalar(key, v, ("number", "ident"), "a number")
        text = v.text.lower()
        if v.kind == "ident" and text.lstrip("-") not in ("inf", "infinity", "nan"):
            self.fail(key, f"must be a number, got {v.text}", line=v.line)
        try:
            return float(int(text, 16)) if "x" in text else float(text.rstrip("f") if "inf" not in text else text)
        except ValueError:
            self.fail(key, f"must be a number, got {v.text}", line=v.line)

    def get(self, key, kind, default=MISSING):
        """One value of a field, converted (see `convert`); `default` when absent."""
        v = self.one(key, default)
        return v if v is default else self.convert(key, v, kind)

    def get_all(self, key, kind):
        return [self.convert(key, v, kind) for v in self.all(key)]

    def unused(self):
        return [name for name, _, _ in self.fields if name not in self.used]

    def __repr__(self):
        return f"Message({self.key!r}, line {self.line}, {len(self.fields)} fields)"


def parse(text, file=None):
    """The top-level Message of a protobuf text-format file; ConvertError names the line."""
    tokens = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            bad = text[pos:].split(None, 1)[0] if text[pos:].strip() else text[pos]
            if bad[:1] in "\"'":
                raise ConvertError("a string with no closing quote on its line", file=file, line=line)
            raise ConvertError(f"unexpected text {bad[:40]!r}", file=file, line=line)
        pos = m.end()
        kind = m.lastgroup
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append((kind, m.group(), line))
    return _Parser(tokens, file).document()


def _unquote(token, file, line):
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        elif e in "xX" and re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        else:
            raise ConvertError(f"unknown escape '\\{e}' in a string", file=file, line=line)
    return "".join(out)


class _Parser:
    def __init__(self, tokens, file):
        self.tokens, self.file, self.i = tokens, file, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None, None)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def fail(self, message, line):
        raise ConvertError(message, file=self.file, line=line)

    def last_line(self):
        return self.tokens[-1][2] if self.tokens else 1

    def document(self):
        root = Message(self.file, 1)
        self.fields(root, closer=None)
        return root

    def fields(self, msg, closer, opened=None):
        while True:
            kind, text, line = self.peek()
            if kind is None:
                if closer is not None:
                    self.fail(f"`{msg.key} {opened[0]}` opened here is never closed (end of file reached)",
                              opened[1])
                return
            if kind == "punct" and text == closer:
                self.take()
                return
            if kind == "punct" and text in ";,":      # optional separators between fields
                self.take()
                continue
            if kind != "ident" or text.startswith("-"):
                if kind == "punct" and text in "}>":
                    self.fail(f"unexpected '{text}': no message is open here", line)
                if kind == "punct" and text == "[":
                    self.fail("extension fields `[name]` are not supported", line)
                shown = text if kind != "string" else "a string"
                self.fail(f"expected a field name, got {shown}", line)
            self.take()
            self.field(msg, text, line)

    def field(self, msg, key, line):
        kind, text, vline = self.peek()
        colon = kind == "punct" and text == ":"
        if colon:
            self.take()
            kind, text, vline = self.peek()
        if kind == "punct" and text in "{<":
            self.take()
            child = Message(self.file, line, key, msg)
            self.fields(child, "}" if text == "{" else ">", (text, line))
            msg.fields.append((key, child, line))
            return
        if not colon:
            self.fail(f"field '{key}': expected ':' and a value, or '{{' and a message, "
                      f"got {text if kind else 'the end of the file'}", vline or line)
        if kind == "punct" and text == "[":
            self.take()
            if self.peek()[1] == "]":
                self.take()
                return
            while True:
                self.value(msg, key, line)
                kind, text, vline = self.take()
                if text == "]":
                    return
                if text != ",":
                    self.fail(f"field '{key}': expected ',' or ']' in the list, got "
                              f"{text if kind else 'the end of the file'}", vline or line)
        self.value(msg, key, line)

    def value(self, msg, key, line):
        kind, text, vline = self.take()
        if kind == "punct" and text in "{<":
            child = Message(self.file, vline, key, msg)
            self.fields(child, "}" if text == "{" else ">", (text, vline))
            msg.fields.append((key, child, vline))
            return
        if kind == "string":
            parts = [_unquote(text, self.file, vline)]
            while self.peek()[0] == "string":         # "a" "b" is "ab"
                parts.append(_unquote(self.take()[1], self.file, vline))
            msg.fields.append((key, Scalar("string", "".join(parts), vline), vline))
            return
        if kind in ("number", "ident"):
            msg.fields.append((key, Scalar(kind, text, vline), vline))
            return
        self.fail(f"field '{key}': expected a value after ':', got {text if kind else 'the end of the file'}",
                  vline or self.last_line())
