"""`python -m engine export`: a net, with its weights, as an ONNX model (opset 17).

The model computes what `Net.forward` computes (inference: dropout removed, dropout2's
test-time scaling kept) on the input `net.forward` takes — float32 [N, C, H, W], already
prepared (mean subtracted, scaled) — with the batch dimension symbolic ("N"). Every
column (`gpu: k`) goes into the one graph; the joins are cuda-convnet's (layers.base):
"concat" is an ONNX Concat along channels, "flat" Flattens each input and concatenates,
"separate" (eltsum, eltmax) feeds the inputs side by side to Sum / Max.

How each type is written (all exact up to float32 rounding order):

| type     | ONNX                                                                            |
|----------|---------------------------------------------------------------------------------|
| conv     | Conv with pads [p, p, p + padding_end, p + padding_end] and `group`              |
|          | (`shared_biases: false`: Conv without bias, then Add of the bias [F, OH, OW])    |
|          | (`channel_sets`: a Gather of the groups' channels along axis 1 before the Conv)  |
| local    | decomposed: a one-hot depthwise Conv gathers each location's patch (im2col),     |
|          | then a batched MatMul with the per-location weights, + bias [F, OH, OW]          |
| fc       | Flatten (C, H, W order) + Gemm(transB=1)                                         |
| pool     | MaxPool / AveragePool(count_include_pad=0) with explicit end pads that make the  |
|          | floor rule give our ceil count (clipped windows); avg `padding`:                 |
|          | count_include_pad=1, corrected by a Mul where a ceil window overruns the padding;|
|          | global: GlobalAveragePool; adaptive: AveragePool when                            |
|          | the bins divide the input, refused otherwise (naming the layer)                  |
| cmrnorm  | LRN (odd size; a Reshape to [N*groups, C/groups, H, W] around it for groups);    |
|          | even size (ONNX's window is then shifted by one map): x * (k + alpha/size *      |
|          | Conv(x^2, banded 0/1 1x1 filter))^-beta                                          |
| rnorm    | decomposed: x * (k + alpha * AveragePool(x^2, count_include_pad=1))^-beta        |
| cnorm    | decomposed: u = x - AveragePool(x, count_include_pad=0), then rnorm's formula on |
|          | u for the denominator, applied to x                                              |
| neuron   | Relu, Clip (brelu), Sigmoid, Abs, Sqrt, Tanh with Mul for a, b; linear = Mul+Add;|
|          | square = Mul(x, x); softrelu = Relu(x) + Log(1 + Exp(-Abs(x))); LeakyRelu, Elu,  |
|          | Selu (our float32 constants)                                                     |
| dropout  | removed (identity at test)                                                       |
| dropout2 | Mul by keep (its test-time scaling)                                              |
| concat   | the join itself                                                                  |
| eltsum   | Mul by each coefficient != 1, then Sum, then the fused neuron                    |
| eltmax   | Max                                                                              |
| softmax  | Softmax(axis=1) on the flattened input                                           |
| sum2     | identity (forward returns what its cost is taken of)                             |
| batchnorm| BatchNormalization (inference: the running statistics), then the fused neuron    |
| prelu    | PRelu, the slopes shaped [C, 1, 1] (or [D] after an fc) to broadcast per channel |

A layer type without an entry here (a plugin's type) is refused: ConfigError naming the
layer and its type. The model carries metadata_props: the net's name, the class names
(from a checkpoint's meta), the input and output names, the checkpoint and its input
preparation, so a deployment knows what the outputs mean.
"""
import json
import os

import numpy as np

from engine.config import INPUT_NAME
from engine.errors import ConfigError
from layers.neuron import spec as neuron_spec

OPSET = 17
IR_VERSION = 8           # the IR of opset 17 (onnx 1.12): readable by older runtimes too
INSTALL_HINT = "pip install -e '.[onnx]'"


def require_onnx():
    """The onnx module, or ConfigError with the one-line install hint."""
    try:
        import onnx
        import onnx.checker  # noqa: F401
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ConfigError(f"export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


class _Graph:
    """Nodes and initializers being collected, with unique value names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.inits = [], []
        self._used = {INPUT_NAME}
        self._scalars = {}

    def fresh(self, hint):
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def const(self, hint, array):
        array = np.ascontiguousarray(array)
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def scalar(self, value, dtype=np.float32):
        """A shared scalar initializer (broadcasts against any shape)."""
        key = (np.dtype(dtype).str, float(value))
        if key not in self._scalars:
            self._scalars[key] = self.const(f"const/{np.dtype(dtype).name}/{value!r}",
                                            np.array(value, dtype))
        return self._scalars[key]

    def shape(self, hint, dims):
        return self.const(hint, np.array(dims, np.int64))

    def op(self, op_type, inputs, hint, **attrs):
        out = self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     name=self.fresh(f"node:{out}"), **attrs))
        return out


# ---- joins and activations --------------------------------------------------------------
def _join(g, node, xs):
    """The layer's joined input (a list of values for join "separate")."""
    layer = node.layer
    if layer.join == "separate":
        return list(xs)
    if layer.join == "flat":
        flat = [x if len(s) == 1 else g.op("Flatten", [x], f"{node.name}/flatten", axis=1)
                for x, s in zip(xs, layer.input_shapes)]
        return flat[0] if len(flat) == 1 else g.op("Concat", flat, f"{node.name}/join", axis=1)
    return xs[0] if len(xs) == 1 else g.op("Concat", xs, f"{node.name}/join", axis=1)


def _neuron(g, x, act, hint):
    """cuda-convnet's neuron function `act` (a layers.neuron.spec.Neuron) applied to x."""
    code, a, b = act.code, float(act.a), float(act.b)
    s = neuron_spec
    if code == s.IDENT:
        return x
    if code == s.LINEAR:
        y = x if a == 1.0 else g.op("Mul", [x, g.scalar(a)], f"{hint}/linear_a")
        return y if b == 0.0 else g.op("Add", [y, g.scalar(b)], f"{hint}/linear_b")
    if code == s.RELU:
        return g.op("Relu", [x], f"{hint}/relu")
    if code == s.BRELU:
        return g.op("Clip", [x, g.scalar(0.0), g.scalar(a)], f"{hint}/brelu")
    if code == s.TANH:
        y = x if b == 1.0 else g.op("Mul", [x, g.scalar(b)], f"{hint}/tanh_b")
        y = g.op("Tanh", [y], f"{hint}/tanh")
        return y if a == 1.0 else g.op("Mul", [y, g.scalar(a)], f"{hint}/tanh_a")
    if code == s.LOGISTIC:
        return g.op("Sigmoid", [x], f"{hint}/logistic")
    if code == s.SOFTRELU:      # max(x, 0) + log(1 + e^-|x|): no overflow, as our kernels
        e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], f"{hint}/abs")], f"{hint}/neg")], f"{hint}/exp")
        tail = g.op("Log", [g.op("Add", [e, g.scalar(1.0)], f"{hint}/1p")], f"{hint}/log1p")
        return g.op("Add", [g.op("Relu", [x], f"{hint}/relu"), tail], f"{hint}/softrelu")
    if code == s.ABS:
        return g.op("Abs", [x], f"{hint}/abs")
    if code == s.SQUARE:
        return g.op("Mul", [x, x], f"{hint}/square")
    if code == s.SQRT:
        return g.op("Sqrt", [x], f"{hint}/sqrt")
    if code == s.LEAKY:
        return g.op("LeakyRelu", [x], f"{hint}/leaky", alpha=a)
    if code == s.ELU:
        return g.op("Elu", [x], f"{hint}/elu", alpha=a)
    if code == s.SELU:
        return g.op("Selu", [x], f"{hint}/selu", alpha=s.SELU_ALPHA, gamma=s.SELU_SCALE)
    raise ConfigError(f"neuron {act.name!r} has no ONNX export")   # a new neuron code: add it above


# ---- one function per layer type: (graph, node, joined input, params) -> output value --------
def _conv(g, node, x, params):
    layer = node.layer
    p, e, k, s = layer.padding, layer.padding_end, layer.size, layer.stride
    bias = g.const(f"{node.name}.bias", params["bias"]) if layer.bias else None   # bias: false: no B
    if layer.channel_sets is not None:     # each group's chosen channels, gathered in order
        x = g.op("Gather", [x, g.const(f"{node.name}/channel_sets", layer._index)], f"{node.name}/gather",
                 axis=1)
    y = g.op("Conv", [x, g.const(f"{node.name}.weight", params["weight"])]
             + ([bias] if layer.shared_biases and layer.bias else []), f"{node.name}/conv",
             kernel_shape=[k, k], strides=[s, s], pads=[p, p, p + e, p + e], group=layer.groups,
             dilations=[1, 1])
    if not layer.shared_biases:      # one bias per filter and position: Conv's B is [F] only
        y = g.op("Add", [y, bias], f"{node.name}/bias")
    return _neuron(g, y, layer.act, node.name)


def _local(g, node, x, params):
    """im2col as a one-hot depthwise Conv (channel c*k*k + ky*k + kx holds x[c] at tap
    (ky, kx): a product by 1 plus zeros, exact), then one batched MatMul per location and group."""
    layer = node.layer
    c, _, _ = layer.input_shape
    p, e, k, s, groups = layer.padding, layer.padding_end, layer.size, layer.stride, layer.groups
    oh, ow = layer.out_hw
    f, locs, kk = layer.filters, oh * ow, k * k
    cg, fg = c // groups, f // groups
    eye = np.zeros((c * kk, 1, k, k), np.float32)
    for ch in range(c):
        for t in range(kk):
            eye[ch * kk + t, 0, t // k, t % k] = 1.0
    cols = g.op("Conv", [x, g.const(f"{node.name}/taps", eye)], f"{node.name}/im2col",
                kernel_shape=[k, k], strides=[s, s], pads=[p, p, p + e, p + e], group=c,
                dilations=[1, 1])                                   # [N, C*k*k, OH, OW]
    # [N, G, Cg*k*k, L] -> [L, G, N, Cg*k*k]: the rows of each location's GEMM
    cols = g.op("Reshape", [cols, g.shape(f"{node.name}/shape_cols", [-1, groups, cg * kk, locs])],
                f"{node.name}/cols")
    cols = g.op("Transpose", [cols], f"{node.name}/cols_t", perm=[3, 1, 0, 2])
    # weight [L, F, Cg, k, k] -> [L, G, Cg*k*k, Fg]
    w = params["weight"].reshape(locs, groups, fg, cg * kk).transpose(0, 1, 3, 2)
    y = g.op("MatMul", [cols, g.const(f"{node.name}.weight", w)], f"{node.name}/gemm")   # [L, G, N, Fg]
    y = g.op("Transpose", [y], f"{node.name}/y_t", perm=[2, 1, 3, 0])                    # [N, G, Fg, L]
    y = g.op("Reshape", [y, g.shape(f"{node.name}/shape_out", [-1, f, oh, ow])], f"{node.name}/y")
    y = g.op("Add", [y, g.const(f"{node.name}.bias", params["bias"])], f"{node.name}/bias")
    return _neuron(g, y, layer.act, node.name)


def _fc(g, node, x, params):
    layer = node.layer
    x = g.op("Flatten", [x], f"{node.name}/flatten", axis=1)      # a no-op on the joined [N, D]
    y = g.op("Gemm", [x, g.const(f"{node.name}.weight", params["weight"]),
                      g.const(f"{node.name}.bias", params["bias"])], f"{node.name}/gemm", transB=1)
    return _neuron(g, y, layer.act, node.name)


def _pool(g, node, x, params):
    """Windows start at o*stride - padding and are clipped at the edges. Begin pads `padding`
    and end pads (o - 1)*stride + size - in - padding (0 where the floor rule already gives
    o) make ONNX's floor rule give our count; MaxPool never picks a pad. avg without padding:
    AveragePool(count_include_pad=0), the in-bounds count; with padding count_include_pad=1
    (ONNX Runtime's PadFusion breaks a Pad before it), times size^2 / our divisor where a ceil
    window runs past the padding. Adaptive bins: GlobalAveragePool, or AveragePool
    where every bin has one size (the bins divide the input); others are refused."""
    layer = node.layer
    _, h, w = layer.input_shape
    oh, ow = layer.out_hw
    if layer.bins is not None:
        return _neuron(g, _adaptive_pool(g, node, x, h, w), layer.act, node.name)
    k, s, p = layer.size, layer.stride, layer.pad
    ends = [max(0, (o - 1) * s + k - side - p) for o, side in ((oh, h), (ow, w))]
    if layer.mode == "max":
        y = g.op("MaxPool", [x], f"{node.name}/maxpool", kernel_shape=[k, k], strides=[s, s],
                 pads=[p, p] + ends, ceil_mode=0)
    elif not p:
        y = g.op("AveragePool", [x], f"{node.name}/avgpool", kernel_shape=[k, k], strides=[s, s],
                 pads=[0, 0] + ends, ceil_mode=0, count_include_pad=0)
    else:
        y = g.op("AveragePool", [x], f"{node.name}/avgpool", kernel_shape=[k, k], strides=[s, s],
                 pads=[p, p] + ends, ceil_mode=0, count_include_pad=1)
        if max(ends) > p:        # a ceil window past the padding: ONNX counts the end pad, we do not
            y = g.op("Mul", [y, g.const(f"{node.name}/divisor", _pad_count_fix(layer, h, w))],
                     f"{node.name}/divisor")
    return _neuron(g, y, layer.act, node.name)


def _pad_count_fix(layer, h, w):
    """[1, 1, OH, OW] size^2 / our divisor (the window's cells inside the padded input)."""
    k, s, p = layer.size, layer.stride, layer.pad

    def counts(side, outs):
        return np.array([min(o * s - p + k, side + p) - (o * s - p) for o in range(outs)], np.float64)
    oh, ow = layer.out_hw
    return (k * k / np.outer(counts(h, oh), counts(w, ow))).astype(np.float32)[None, None]


def _adaptive_pool(g, node, x, h, w):
    oh, ow = node.layer.out_hw
    if (oh, ow) == (1, 1):
        return g.op("GlobalAveragePool", [x], f"{node.name}/globalavgpool")
    if h % oh or w % ow:
        # bins of different sizes (PyTorch's floor/ceil bounds): the pool is linear, so it is a
        # MatMul of each [H*W] plane by the [H*W, OH*OW] matrix of bin averages
        c = node.layer.input_shape[0]
        flat = g.op("Reshape", [x, g.shape(f"{node.name}/shape_in", [-1, c, h * w])], f"{node.name}/planes")
        y = g.op("MatMul", [flat, g.const(f"{node.name}/bins", _adaptive_matrix(h, w, oh, ow))],
                 f"{node.name}/adaptive")
        return g.op("Reshape", [y, g.shape(f"{node.name}/shape_out", [-1, c, oh, ow])], f"{node.name}/avgpool")
    k = [h // oh, w // ow]
    return g.op("AveragePool", [x], f"{node.name}/avgpool", kernel_shape=k, strides=k, pads=[0, 0, 0, 0])


def _adaptive_matrix(h, w, oh, ow):
    """[H*W, OH*OW]: column (i, j) averages bin i x j, rows floor(i*H/OH) .. ceil((i+1)*H/OH)."""
    def bins(side, outs):
        return [(i * side // outs, -(-(i + 1) * side // outs)) for i in range(outs)]
    m = np.zeros((h, w, oh, ow), np.float64)
    for i, (y0, y1) in enumerate(bins(h, oh)):
        for j, (x0, x1) in enumerate(bins(w, ow)):
            m[y0:y1, x0:x1, i, j] = 1.0 / ((y1 - y0) * (x1 - x0))
    return m.reshape(h * w, oh * ow).astype(np.float32)


def _scale_by_denominator(g, name, x, total, scale, k, beta):
    """x * (k + scale * total)^-beta."""
    d = g.op("Add", [g.op("Mul", [total, g.scalar(scale)], f"{name}/scaled"), g.scalar(k)], f"{name}/denom")
    return g.op("Mul", [x, g.op("Pow", [d, g.scalar(-beta)], f"{name}/pow")], f"{name}/norm")


def _cmrnorm(g, node, x, params):
    layer = node.layer
    c, h, w = layer.input_shape
    size, groups = layer.size, layer.groups
    alpha, beta, k = float(layer.alpha), float(layer.beta), float(layer.k)
    if size % 2:      # ONNX LRN's window c - (size-1)/2 .. c + (size-1)/2 is ours for odd sizes
        y = x if groups == 1 else g.op("Reshape", [x, g.shape(f"{node.name}/shape_groups",
                                                               [-1, c // groups, h, w])], f"{node.name}/groups")
        y = g.op("LRN", [y], f"{node.name}/lrn", size=size, alpha=alpha, beta=beta, bias=k)
        return y if groups == 1 else g.op("Reshape", [y, g.shape(f"{node.name}/shape_maps", [-1, c, h, w])],
                                          f"{node.name}/ungroup")
    # even size: maps c - size/2 .. c + size/2 - 1 (ONNX's is one map later): sum the
    # squares with a banded 0/1 1x1 convolution, block-diagonal over the groups
    from layers.cmrnorm.reference import window
    cg = c // groups
    band = np.zeros((c, c, 1, 1), np.float32)
    for gi in range(groups):
        for m in range(cg):
            win = window(m, size, cg)
            band[gi * cg + m, gi * cg + win.start:gi * cg + win.stop] = 1.0
    sq = g.op("Mul", [x, x], f"{node.name}/square")
    total = g.op("Conv", [sq, g.const(f"{node.name}/band", band)], f"{node.name}/window_sum",
                 kernel_shape=[1, 1])
    return _scale_by_denominator(g, node.name, x, total, alpha / size, k, beta)


def _same_map_pool(g, name, x, size, count_include_pad):
    """AveragePool over the size x size window of each pixel, rows y - size//2 ..
    y - size//2 + size - 1 (rnorm's and cnorm's window), stride 1, clipped at the edges."""
    a, b = size // 2, size - 1 - size // 2
    return g.op("AveragePool", [x], name, kernel_shape=[size, size], strides=[1, 1], pads=[a, a, b, b],
                count_include_pad=count_include_pad)


def _rnorm(g, node, x, params):
    """The sum over the clipped window / size^2 is the average over the zero-padded window."""
    layer = node.layer
    sq = g.op("Mul", [x, x], f"{node.name}/square")
    mean_sq = _same_map_pool(g, f"{node.name}/window_mean", sq, layer.size, 1)
    return _scale_by_denominator(g, node.name, x, mean_sq, float(layer.alpha), float(layer.k),
                                 float(layer.beta))


def _cnorm(g, node, x, params):
    layer = node.layer
    mean = _same_map_pool(g, f"{node.name}/local_mean", x, layer.size, 0)   # in-bounds pixels only
    u = g.op("Sub", [x, mean], f"{node.name}/u")
    sq = g.op("Mul", [u, u], f"{node.name}/square")
    mean_sq = _same_map_pool(g, f"{node.name}/window_mean", sq, layer.size, 1)
    return _scale_by_denominator(g, node.name, x, mean_sq, float(layer.alpha), float(layer.k),
                                 float(layer.beta))


def _neuron_layer(g, node, x, params):
    return _neuron(g, x, node.layer.act, node.name)


def _identity(g, node, x, params):
    return x


def _dropout2(g, node, x, params):
    return g.op("Mul", [x, g.scalar(float(node.layer.cfg["keep"]))], f"{node.name}/keep")


def _eltsum(g, node, xs, params):
    terms = [x if c == 1.0 else g.op("Mul", [x, g.scalar(c)], f"{node.name}/coeff")
             for x, c in zip(xs, node.layer.coefficients)]
    return _neuron(g, g.op("Sum", terms, f"{node.name}/sum"), node.layer.act, node.name)


def _eltmax(g, node, xs, params):
    return g.op("Max", xs, f"{node.name}/max")


def _softmax(g, node, x, params):
    return g.op("Softmax", [x], f"{node.name}/softmax", axis=1)


def _batchnorm(g, node, x, params):
    """Net.forward's batchnorm normalises by the running statistics: ONNX's inference mode."""
    y = g.op("BatchNormalization", [x] + [g.const(f"{node.name}.{k}", params[k]) for k in
                                          ("weight", "bias", "running_mean", "running_var")],
             f"{node.name}/batchnorm", epsilon=float(node.layer.eps))
    return _neuron(g, y, node.layer.act, node.name)


def _prelu(g, node, x, params):
    layer = node.layer
    slope = params["weight"]
    if not layer.shared and len(layer.input_shape) == 3:
        slope = slope.reshape(-1, 1, 1)          # broadcast over H, W (ONNX aligns trailing axes)
    return g.op("PRelu", [x, g.const(f"{node.name}.weight", slope)], f"{node.name}/prelu")


EXPORTERS = {
    "conv": _conv, "local": _local, "fc": _fc, "pool": _pool,
    "cmrnorm": _cmrnorm, "rnorm": _rnorm, "cnorm": _cnorm,
    "neuron": _neuron_layer, "dropout": _identity, "dropout2": _dropout2, "concat": _identity,
    "eltsum": _eltsum, "eltmax": _eltmax, "softmax": _softmax, "sum2": _identity,
    "batchnorm": _batchnorm, "prelu": _prelu,
}
DECOMPOSED = ("local", "rnorm", "cnorm")     # no ONNX op of their own: written with standard ops


def refuse(net):
    """ConfigError for the first layer whose type has no exporter (a plugin's type)."""
    for node in net.layers:
        if node.type not in EXPORTERS:
            spec = node.spec
            raise ConfigError(f"a '{node.type}' layer has no ONNX export (exported types: "
                              f"{', '.join(sorted(EXPORTERS))})", file=net.spec.file,
                              line=spec.line("type") if hasattr(spec, "line") else None,
                              layer=node.name, key="type")


def metadata(net, checkpoint=None, seed=0):
    """The metadata_props: what a deployment needs to read the outputs."""
    out = net.output_layer
    props = {"net": net.name, "input": INPUT_NAME, "output": out.name, "output_type": out.type,
             "producer": "convnet-engine", "opset": str(OPSET),
             "input_layout": "float32 [N, C, H, W], C, H, W = " + ",".join(map(str, net.input_shape))
                             + "; prepared as Net.forward takes it (mean subtracted, then scaled)"}
    if net.classifies:
        props["output_meaning"] = "class probabilities [N, classes]"
    names = getattr(net, "class_names", None)
    if names:
        props["class_names"] = json.dumps(list(names))
    meta = getattr(net, "checkpoint_meta", None)
    if checkpoint is not None and meta is not None:
        props["checkpoint"] = os.path.abspath(meta.get("path", str(checkpoint)))
        if meta.get("id"):
            props["checkpoint_id"] = str(meta["id"])
        pre = getattr(net, "preprocess", None)
        if pre is not None:
            props["preprocess_scale"] = repr(float(pre.scale))
            mean = np.asarray(pre.mean)
            if mean.size == mean.shape[0]:            # one value per channel
                props["preprocess_mean"] = json.dumps([float(v) for v in mean.reshape(-1)])
            else:
                props["preprocess_mean"] = f"mean image {list(mean.shape)} stored in the checkpoint"
    else:
        props["weights"] = f"engine.load(NET, seed={seed}) (not trained)"
    return props


def to_onnx(net, outputs=(), props=None):
    """The ONNX ModelProto of `net` with its current weights. `outputs`: layer names whose
    activations become graph outputs too, after the net's own output."""
    onnx = require_onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    refuse(net)
    g = _Graph(onnx)
    state = net.state_dict()
    values = {INPUT_NAME: INPUT_NAME}
    for node in net.layers:
        g._used.add(node.name)          # the bare layer names are kept for graph outputs
    for node in net.layers:
        # "<layer>.<param>": the param is after the last dot (block layers' names hold dots)
        params = {k.rpartition(".")[2]: v for k, v in state.items() if k.rpartition(".")[0] == node.name}
        x = _join(g, node, [values[i] for i in node.inputs])
        values[node.name] = EXPORTERS[node.type](g, node, x, params)
    wanted = [net.output_layer.name] + [n for n in outputs if n != net.output_layer.name]
    graph_outputs = []
    for name in wanted:
        node = net.layer(name)
        g.nodes.append(helper.make_node("Identity", [values[name]], [name], name=g.fresh(f"node:{name}")))
        graph_outputs.append(helper.make_tensor_value_info(name, tp.FLOAT, ["N", *node.output_shape]))
    graph = helper.make_graph(
        g.nodes, net.name,
        [helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, ["N", *net.input_shape])],
        graph_outputs, initializer=g.inits,
        doc_string=f"{net.name}: exported by convnet-engine from its YAML net")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="convnet-engine", ir_version=IR_VERSION,
                              doc_string=f"{net.name} ({len(net.layers)} layers, {net.num_params:,} parameters)")
    helper.set_model_props(model, props if props is not None else metadata(net))
    return model


def check(model):
    """onnx's full check (schema, types, shape inference); ConfigError saying why not."""
    onnx = require_onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:                  # ValidationError, InferenceError: a bug in an exporter
        raise RuntimeError(f"the exported model fails onnx.checker: {e}") from e


def load_net(net_path=None, checkpoint=None, seed=0, plugins=False, overrides=None):
    from engine.net import load
    if net_path is None and checkpoint is None:
        raise ConfigError("give a net file (python -m engine export NET.yaml -o model.onnx) or --checkpoint RUN")
    return load(net_path, seed=seed, checkpoint=checkpoint, plugins=plugins, overrides=overrides)


def export(net_path, out, checkpoint=None, seed=0, plugins=False, overrides=None):
    """Write `out` (an .onnx file, atomically: a temporary file, then renamed). Returns
    (net, model). `overrides` as in engine.load (--set)."""
    from engine.checkpoint import atomic_path
    onnx = require_onnx()
    net = load_net(net_path, checkpoint=checkpoint, seed=seed, plugins=plugins, overrides=overrides)
    model = to_onnx(net, props=metadata(net, checkpoint=checkpoint, seed=seed))
    if model.ByteSize() >= 2**31:
        raise ConfigError(f"the model needs {model.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB "
                          "limit for one file", file=out)
    check(model)
    try:
        with atomic_path(out) as tmp:
            onnx.save(model, tmp)
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=out) from None
    return net, model


def run(net_path, out, checkpoint=None, seed=0, plugins=False, overrides=None):
    """The CLI verb: export and print one line."""
    net, model = export(net_path, out, checkpoint=checkpoint, seed=seed, plugins=plugins, overrides=overrides)
    decomposed = sorted({n.type for n in net.layers if n.type in DECOMPOSED})
    note = f"; decomposed into standard ops: {', '.join(decomposed)}" if decomposed else ""
    size = os.path.getsize(out)
    print(f"wrote {out}: {net.name}, ONNX opset {OPSET}, {len(model.graph.node)} nodes, "
          f"{net.num_params:,} parameters ({size / 2**20:.1f} MiB), input {INPUT_NAME} "
          f"[N,{','.join(map(str, net.input_shape))}], output {net.output_layer.name}{note}")
    return 0
