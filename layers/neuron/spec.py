"""Neuron names in cuda-convnet's syntax: `relu`, `tanh[1.7159,0.6667]`, `brelu[6]`, ...

`parse(text)` turns a name into a `Neuron`: the function's kernel code and its two float32
parameters a, b, which every kernel that applies an activation takes (the neuron layer,
and the activation fused on conv, fc and local outputs). `NEURON_KEY` is the YAML key
(`neuron:` on those layers, `fn:` on a neuron layer) that checks a name.

| name        | f(x)                 | without brackets; notes                                 |
|-------------|----------------------|---------------------------------------------------------|
| ident       | x                    |                                                         |
| linear[a,b] | a x + b              | a=1, b=0 (the identity)                                 |
| relu        | max(x, 0)            |                                                         |
| brelu[a]    | min(max(x, 0), a)    | a is required (no default in cuda-convnet); a > 0       |
| tanh[a,b]   | a tanh(b x)          | a=1, b=1; a != 0                                        |
| logistic    | 1 / (1 + e^-x)       |                                                         |
| softrelu    | log(1 + e^x)         | computed as max(x, 0) + log(1 + e^-abs(x)): no overflow |
| abs         | abs(x)               |                                                         |
| square      | x^2                  |                                                         |
| sqrt        | sqrt(x)              | NaN for x < 0 and slope g/0 at 0, as cuda-convnet's     |
| leaky[a]    | x if x > 0 else a x  | a=0.01 (PyTorch's LeakyReLU); a >= 0                    |
| elu[a]      | x if x > 0 else      | a=1 (PyTorch's ELU); a > 0                              |
|             |   a (e^x - 1)        |                                                         |
| selu        | s x if x > 0 else    | PyTorch's SELU constants: s = SELU_SCALE, a = SELU_ALPHA|
|             |   s a (e^x - 1)      |                                                         |

cuda-convnet requires the brackets on tanh and linear; the bare names, which this engine
had before, keep meaning tanh[1,1] and the identity. leaky, elu and selu are not
cuda-convnet's; their gradients, like the others', are taken from the output y, which is why
leaky's slope may not be negative and elu's a must be positive (y <= 0 exactly where x <= 0).
"""
import difflib
import math
from dataclasses import dataclass

import numpy as np

from layers.base import FLOAT32_MAX, Key, LayerError, shown

# Kernel codes (numba freezes these module constants into the kernels that import them).
IDENT, RELU, TANH, LOGISTIC, ABS, LINEAR, BRELU, SOFTRELU, SQUARE, SQRT, LEAKY, ELU, SELU = range(13)
NEEDS_INPUT = frozenset({ABS, SQUARE})   # their gradient needs x itself; the others use f(x)

# name -> (code, parameter names, the parameters when none are given (None: required))
FUNCTIONS = {
    "ident": (IDENT, (), ()),
    "linear": (LINEAR, ("a", "b"), (1.0, 0.0)),
    "relu": (RELU, (), ()),
    "brelu": (BRELU, ("a",), None),
    "tanh": (TANH, ("a", "b"), (1.0, 1.0)),
    "logistic": (LOGISTIC, (), ()),
    "softrelu": (SOFTRELU, (), ()),
    "abs": (ABS, (), ()),
    "square": (SQUARE, (), ()),
    "sqrt": (SQRT, (), ()),
    "leaky": (LEAKY, ("a",), (0.01,)),
    "elu": (ELU, ("a",), (1.0,)),
    "selu": (SELU, (), ()),
}
# torch.nn.SELU's constants, as float32 (the kernels' precision)
SELU_SCALE = float(np.float32(1.0507009873554804934193349852946))
SELU_ALPHA = float(np.float32(1.6732632423543772848170429916717))


def syntax(name):
    """How a function is written: `tanh[a,b]`, `relu`."""
    params = FUNCTIONS[name][1]
    return f"{name}[{','.join(params)}]" if params else name


SYNTAX = " | ".join(syntax(name) for name in FUNCTIONS)


@dataclass(frozen=True)
class Neuron:
    """A parsed neuron: `code` selects the function in the kernels, `a` and `b` are its
    parameters (unused ones are 0)."""

    name: str
    code: int
    a: float = 0.0
    b: float = 0.0

    @property
    def identity(self):
        return self.code == IDENT

    @property
    def needs_input(self):
        """True where backward needs the pre-activation kept (abs, square)."""
        return self.code in NEEDS_INPUT

    def kernel_args(self):
        """(code, a, b) as the kernels take them: int, float32, float32."""
        return self.code, np.float32(self.a), np.float32(self.b)


def parse(text):
    """A `Neuron` from a name such as "relu" or "tanh[1.7159, 0.6667]"; None is the identity.

    Raises ValueError with a message naming the problem (unknown name, wrong parameter
    count, a parameter that is not a finite float32 number, a parameter out of range)."""
    if text is None:
        return Neuron("ident", IDENT)
    if not isinstance(text, str):
        raise ValueError(_not_a_name(text))
    name, values = _split(text.strip())
    if name not in FUNCTIONS:
        close = difflib.get_close_matches(name, FUNCTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown neuron {shown(text)}{hint}; valid: {SYNTAX}")
    code, names, defaults = FUNCTIONS[name]
    if values is None:
        if defaults is None:
            raise ValueError(f"{shown(text)}: {name} needs its parameter{'s' * (len(names) > 1)}: "
                             f"{syntax(name)}")
        params = defaults
    elif not names:
        raise ValueError(f"{shown(text)}: {name} takes no parameters")
    elif len(values) != len(names):
        raise ValueError(f"{shown(text)}: {name} takes {len(names)} parameter{'s' * (len(names) > 1)} "
                         f"({syntax(name)}), got {len(values)}")
    else:
        params = tuple(_number(text, i, v) for i, v in enumerate(values))
    _check_range(text, name, params)
    if code == LINEAR and params == (1.0, 0.0):
        return Neuron(name, IDENT)
    return Neuron(name, code, *params)


def _not_a_name(value):
    return f"must be a neuron name such as relu or tanh[1.7159,0.6667], got {shown(value)}"


def _split(text):
    """("tanh", ["1", "2"]) from "tanh[1,2]"; (name, None) without brackets."""
    if "[" not in text and "]" not in text:
        return text, None
    name, sep, rest = text.partition("[")
    if not sep or not rest.endswith("]") or "[" in rest[:-1] or "]" in rest[:-1]:
        raise ValueError(f"{shown(text)}: write parameters as name[p1,p2] (cuda-convnet's syntax)")
    inside = rest[:-1]
    return name.strip(), inside.split(",") if inside.strip() else []


def _number(text, index, token):
    try:
        value = float(token.strip())
    except ValueError:
        raise ValueError(f"{shown(text)}: parameter {index + 1} must be a number, got "
                         f"{shown(token.strip())}") from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(f"{shown(text)}: parameter {index + 1} must be a finite number that fits "
                         f"a float32, got {token.strip()}")
    return float(np.float32(value))      # the value the kernels will see


def _check_range(text, name, params):
    if name == "tanh" and params[0] == 0.0:
        raise ValueError(f"{shown(text)}: a must not be 0 in float32 (a tanh(b x) would be "
                         "constant zero)")
    if name == "brelu" and params[0] <= 0.0:
        raise ValueError(f"{shown(text)}: the bound a must be > 0 in float32")
    if name == "leaky" and params[0] < 0.0:
        raise ValueError(f"{shown(text)}: the negative slope a must be >= 0 (the gradient is "
                         "taken from the output's sign)")
    if name == "elu" and params[0] <= 0.0:
        raise ValueError(f"{shown(text)}: a must be > 0 in float32 (the gradient is taken from "
                         "the output's sign)")


class NeuronKey(Key):
    """A YAML key holding a neuron name; the checked value is the name as written."""

    def __init__(self, default=None, doc=""):
        super().__init__(str, default, doc=doc)

    def check(self, key, value):
        try:
            if not isinstance(value, str):       # parse(None) is the identity; a key needs a name
                raise ValueError(_not_a_name(value))
            parse(value)
        except ValueError as e:
            raise LayerError(key, str(e)) from None
        return value.strip()

    def describe(self):
        return f"{SYNTAX}, " + ("required" if self.required else f"default {self.default!r}")


NEURON_KEY = NeuronKey(doc=f"activation fused on the output: {SYNTAX}")
NONLINEARITY_KEY = NeuronKey(None, doc="the activation whose gain `init: kaiming | xavier` uses "
                                       "(default: this layer's neuron; name it when it is a layer of its own)")

GAINS = "relu, leaky[a], tanh, selu, logistic, linear, ident"


def gain(neuron):
    """torch.nn.init.calculate_gain for a parsed neuron (by function, as torch: tanh[a,b] is
    tanh's 5/3, linear[a,b] linear's 1); ValueError for a function torch gives no gain."""
    code = neuron.code
    if code in (IDENT, LINEAR, LOGISTIC):
        return 1.0
    if code == RELU:
        return math.sqrt(2.0)
    if code == LEAKY:
        return math.sqrt(2.0 / (1.0 + neuron.a ** 2))
    if code == TANH:
        return 5.0 / 3.0
    if code == SELU:
        return 0.75
    raise ValueError(f"neuron {neuron.name} has no gain (torch.nn.init.calculate_gain knows {GAINS}): "
                     "set `nonlinearity:` to the one to initialise for")
