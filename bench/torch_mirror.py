"""A PyTorch module computing the same function as one of our nets, built from the Net.

    from bench.torch_mirror import mirror
    net = engine.load("nets/cifar10-18pct.yaml")
    model = mirror(net)                       # our initial weights copied in
    probs = model(torch.from_numpy(x))        # = net.forward(x) (eval mode)
    loss = model.loss(torch.from_numpy(x), torch.from_numpy(labels))   # cross-entropy on logits

The mirror walks `net.layers` in graph order and runs each layer as plain PyTorch ops with
our semantics (layers/*/reference.py):

- several inputs are joined as the layer's `join` says: along channels ("concat"),
  flattened one after the other ("flat": fc, softmax, concat mode flat), or side by side
  ("separate": eltsum, eltmax);
- conv: `padding_end` extra zeros past the bottom and right edges (F.pad), groups, the
  fused `neuron`; `shared_biases: false` adds the bias [F, OH, OW] after F.conv2d;
  `channel_sets`: index_select of the groups' channels (in order) before the grouped conv2d;
- pool: ceil_mode = `ceil` (cuda-convnet's rule is ceil_mode=True without padding), `padding`
  (avg: count_include_pad=True, torch's default), global / adaptive as adaptive_avg_pool2d;
  the fused `neuron` after pooling;
- cmrnorm: F.local_response_norm (alpha divided by size, the same window), per `groups`;
- rnorm: x * (k + alpha/size^2 * window sum of x^2)^-beta, the size x size window starting
  size//2 before the pixel, zeros outside (avg_pool2d of the padded squares);
- cnorm: as rnorm on the differences from the window means (the means over in-bounds pixels);
- dropout (inverted), dropout2 (0/1 mask keeping `keep`, x keep at test);
- batchnorm: F.batch_norm with the layer's state (running_mean, running_var) as buffers,
  batch statistics in training mode (updating them), the running ones in eval; prelu: F.prelu;
- the output softmax is logits + cross-entropy for training (`loss`), probabilities for
  `forward`; sum2 is coeff * batch mean of the sum of squares.

A type is mirrored by its entry in FORWARD; one in NOT_MIRRORED (`local`) raises
UnsupportedLayer naming the layer and type.

`describe(net.layers)` turns the layers into plain JSON-able dicts, and `Mirror(description,
state)` builds the module from those alone: this file imports nothing from the engine, so a
benchmark child process can run the mirror with PyTorch's memory only (bench/run.py). Without
`state`, weights are drawn as the engine draws them (Gaussian init_w, constant init_b), with
torch's generator.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_NAME = "data"


class UnsupportedLayer(NotImplementedError):
    """The mirror has no PyTorch version of a layer type."""


def describe(nodes):
    """Our layers (net.layers, or engine.graph.build's nodes) as JSON-able dicts: everything
    the mirror needs, with the fused neuron parsed to [function, a, b]."""
    from layers.neuron import spec
    names = {code: name for name, (code, _, _) in spec.FUNCTIONS.items()}

    def neuron(text):
        n = spec.parse(text)
        return [names[n.code], float(n.a), float(n.b)]

    out = []
    for node in nodes:
        layer = node.layer
        cfg = {k: v for k, v in layer.cfg.items() if k not in ("neuron", "fn")}
        d = {"name": node.name, "type": node.type, "inputs": list(node.inputs), "cfg": cfg,
             "join": layer.join, "is_cost": bool(layer.is_cost),
             "loss_weight": float(getattr(node, "cost_weight", 1.0)) if layer.is_cost else 0.0,
             "params": {p: list(shape) for p, shape in layer.param_shapes().items()},
             "state": {s: a.tolist() for s, a in layer.init_state().items()}}
        if "neuron" in layer.cfg:
            d["neuron"] = neuron(layer.cfg["neuron"])
        if "fn" in layer.cfg:
            d["neuron"] = neuron(layer.cfg["fn"])
        if node.type == "eltsum":
            d["cfg"]["coeffs"] = list(layer.coefficients)
        if node.type == "pool":
            d["cfg"]["bins"] = None if layer.bins is None else list(layer.bins)
        if "weight" in d["params"] and "init_w" in layer.cfg:
            d["weight_std"] = float(layer.weight_std())
        out.append(d)
    return out


def _neuron(fn):
    """A torch function for [name, a, b] (describe's form of a neuron; None: identity)."""
    name, a, b = fn or ("ident", 0.0, 0.0)
    table = {
        "ident": lambda x: x,
        "linear": lambda x: a * x + b,
        "relu": F.relu,
        "brelu": lambda x: torch.clamp(x, 0.0, a),
        "tanh": lambda x: a * torch.tanh(b * x),
        "logistic": torch.sigmoid,
        "softrelu": F.softplus,
        "abs": torch.abs,
        "square": lambda x: x * x,
        "sqrt": torch.sqrt,
        "leaky": lambda x: F.leaky_relu(x, a),
        "elu": lambda x: F.elu(x, a),
        "selu": F.selu,
    }
    return table[name]


def _window_sum(x, size):
    """Sum over each pixel's size x size window (rows y - size//2 .. y - size//2 + size - 1),
    zeros outside the image."""
    lo, hi = size // 2, size - 1 - size // 2
    return F.avg_pool2d(F.pad(x, (lo, hi, lo, hi)), size, stride=1) * (size * size)


class Part(nn.Module):
    """One of our layers (a `describe` dict): its parameters, if any, and a forward on the
    joined input."""

    def __init__(self, d):
        super().__init__()
        self.name, self.type, self.cfg, self.join = d["name"], d["type"], d["cfg"], d["join"]
        self.final = False              # the net's softmax cost layer: set by Mirror
        for pname, shape in d["params"].items():
            self.register_parameter(pname, nn.Parameter(torch.zeros(shape, dtype=torch.float32)))
        for sname, init in d.get("state", {}).items():          # layer state: buffers, no parameters
            self.register_buffer(sname, torch.tensor(init, dtype=torch.float32))
        self.act = _neuron(d.get("neuron"))
        if self.type == "eltsum":
            self.coefficients = tuple(self.cfg["coeffs"])
        if self.type == "pool":
            self.stride = self.cfg["stride"]    # filled in by the layer's setup when left out
        self.weight_std = d.get("weight_std", self.cfg.get("init_w", 0.01))   # init: kaiming | xavier

    def init_weights(self, generator):
        """The engine's init: weights N(0, init_w), biases init_b (batchnorm: weight 1, bias 0;
        prelu: the slopes `init_slope`)."""
        with torch.no_grad():
            for pname, p in self.named_parameters(recurse=False):
                if self.type in CONSTANT_INIT:
                    p.fill_(CONSTANT_INIT[self.type](self.cfg, pname))
                elif pname == "bias":
                    p.fill_(self.cfg.get("init_b", 0.0))
                else:
                    p.normal_(0.0, self.weight_std, generator=generator)

    def forward(self, x):
        return FORWARD[self.type](self, x)


def _conv(part, x):
    c = part.cfg
    p, e = c["padding"], c["padding_end"]
    if e:
        x, p = F.pad(x, (p, p + e, p, p + e)), 0
    if c.get("channel_sets") is not None:
        x = x.index_select(1, torch.tensor([ch for one in c["channel_sets"] for ch in one]))
    shared = c.get("shared_biases", True)
    bias = getattr(part, "bias", None)          # none with `bias: false`
    y = F.conv2d(x, part.weight, bias if shared else None, stride=c["stride"], padding=p,
                 groups=c["groups"])
    return part.act(y if shared else y + bias)


def _pool(part, x):
    c = part.cfg
    if c.get("bins"):
        return part.act(F.adaptive_avg_pool2d(x, c["bins"]))
    pool = F.max_pool2d if c["mode"] == "max" else F.avg_pool2d
    return part.act(pool(x, c["size"], part.stride, padding=c.get("padding", 0), ceil_mode=c.get("ceil", True)))


def _cmrnorm(part, x):
    c = part.cfg
    n, ch, h, w = x.shape
    g = c["groups"]
    y = F.local_response_norm(x.reshape(n * g, ch // g, h, w), c["size"], alpha=c["alpha"],
                              beta=c["beta"], k=c["k"])
    return y.reshape(n, ch, h, w)


def _rnorm(part, x, contrast=False):
    c = part.cfg
    size = c["size"]
    u = x
    if contrast:
        count = _window_sum(torch.ones_like(x[:1, :1]), size)
        u = x - _window_sum(x, size) / count
    d = c["k"] + c["alpha"] / (size * size) * _window_sum(u * u, size)
    return x * d.pow(-c["beta"])


def _dropout2(part, x):
    keep = part.cfg["keep"]
    if not part.training:
        return x * keep
    return x * (torch.rand_like(x) < keep).to(x.dtype)


def _batchnorm(part, x):
    c = part.cfg
    return part.act(F.batch_norm(x, part.running_mean, part.running_var, part.weight, part.bias,
                                 training=part.training, momentum=c["momentum"], eps=c["eps"]))


def _softmax(part, x):
    x = x.reshape(x.shape[0], -1)
    return x if part.final else torch.softmax(x, dim=1)   # the final one: logits


# each layer type's forward on the joined input, as torch ops with our semantics
FORWARD = {
    "conv": _conv,
    "fc": lambda part, x: part.act(F.linear(x.reshape(x.shape[0], -1), part.weight, part.bias)),
    "pool": _pool,
    "cmrnorm": _cmrnorm,
    "rnorm": _rnorm,
    "cnorm": lambda part, x: _rnorm(part, x, contrast=True),
    "dropout": lambda part, x: F.dropout(x, part.cfg["rate"], part.training),
    "dropout2": _dropout2,
    "neuron": lambda part, x: part.act(x),
    "concat": lambda part, x: x,
    "eltsum": lambda part, xs: part.act(sum(k * x for k, x in zip(part.coefficients, xs))),
    "eltmax": lambda part, xs: torch.stack(list(xs)).max(dim=0).values,
    "softmax": _softmax,
    "sum2": lambda part, x: x,          # its cost is in Mirror.loss
    "batchnorm": _batchnorm,
    "prelu": lambda part, x: F.prelu(x, part.weight),
}
# types whose parameters start at constants, not N(0, init_w): (cfg, param name) -> the constant
CONSTANT_INIT = {"batchnorm": lambda cfg, pname: 1.0 if pname == "weight" else 0.0,
                 "prelu": lambda cfg, pname: cfg["init_slope"]}
# the layer types the mirror leaves out on purpose, and why (tests check every type is in one)
NOT_MIRRORED = {"local": "no PyTorch layer computes unshared (locally connected) filters"}
SUPPORTED = tuple(FORWARD)


class Mirror(nn.Module):
    """Our net as a torch module, from `describe(net.layers)`. `forward(x)` = net.forward(x)
    (probabilities for a softmax net), `logits(x)` = the cost layer's input, `loss(x, labels)`
    = the net's mean cost. `state`: our state_dict to copy in (else weights drawn with `seed`)."""

    def __init__(self, description, state=None, seed=0):
        super().__init__()
        for d in description:
            if d["type"] not in SUPPORTED:
                raise UnsupportedLayer(f"layer '{d['name']}' of type '{d['type']}': the PyTorch mirror "
                                       f"has no version of it (supported: {', '.join(SUPPORTED)})")
        self.names = [d["name"] for d in description]
        self.inputs = [list(d["inputs"]) for d in description]
        self.parts = nn.ModuleList(Part(d) for d in description)
        self.costs = [d["is_cost"] for d in description]
        self.loss_weights = [d.get("loss_weight", 1.0) for d in description]
        self.cost_type = description[-1]["type"] if description[-1]["is_cost"] else None
        self.parts[-1].final = self.cost_type == "softmax"
        if state is not None:
            self.load_engine_state(state)
        else:
            generator = torch.Generator().manual_seed(seed)
            for part in self.parts:
                part.init_weights(generator)

    def load_engine_state(self, state):
        """Copy our state_dict ({"<layer>.weight": array, ...}) into the parameters and the
        layers' state (buffers)."""
        with torch.no_grad():
            for name, part in zip(self.names, self.parts):
                for pname, p in list(part.named_parameters(recurse=False)) + list(part.named_buffers(recurse=False)):
                    p.copy_(torch.from_numpy(np.ascontiguousarray(state[f"{name}.{pname}"])))

    def parameter_groups(self, weight_decay):
        """SGD groups as the engine's solver: weight decay on weights, none on biases."""
        weights = [p for part in self.parts for n, p in part.named_parameters() if n != "bias"]
        biases = [p for part in self.parts for n, p in part.named_parameters() if n == "bias"]
        return [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]

    @staticmethod
    def _join(part, xs):
        if part.join == "separate":
            return xs
        if part.join == "flat":
            n = xs[0].shape[0]
            return torch.cat([x.reshape(n, -1) for x in xs], dim=1) if len(xs) > 1 else xs[0].reshape(n, -1)
        return torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]

    def logits(self, x):
        """The last layer's output, except that a final softmax gives its input (logits)."""
        acts = {INPUT_NAME: x}
        for name, inputs, part in zip(self.names, self.inputs, self.parts):
            acts[name] = part(self._join(part, [acts[i] for i in inputs]))
        return acts[self.names[-1]]

    def forward(self, x):
        y = self.logits(x)
        return torch.softmax(y, dim=1) if self.cost_type == "softmax" else y

    def loss(self, x, labels=None):
        """The net's loss: the sum of every cost layer's cost times its `coeff` (auxiliary
        heads); sum2 applies its own coeff inside its cost."""
        if self.cost_type is None:
            raise ValueError("the net ends in no cost layer: nothing to train")
        acts, total = {INPUT_NAME: x}, 0.0
        for name, inputs, part, is_cost, weight in zip(self.names, self.inputs, self.parts, self.costs,
                                                       self.loss_weights):
            joined = self._join(part, [acts[i] for i in inputs])
            if is_cost and part.type == "softmax":
                total = total + weight * F.cross_entropy(joined, labels)
            elif is_cost and part.type == "sum2":
                total = total + part.cfg["coeff"] * (joined * joined).sum() / joined.shape[0]
            acts[name] = part(joined)
        return total


def mirror(net):
    """A `Mirror` of an engine Net holding a copy of its current weights (float32, CPU)."""
    return Mirror(describe(net.layers), net.state_dict())
