"""A Caffe net (.prototxt), and optionally its solver file, to a YAML net
(`python -m engine convert NET.prototxt -o NET.yaml [--input C,H,W] [--solver SOLVER.prototxt]`).

The TRAIN-phase net is converted: layers with `include { phase: TEST }` (or
`exclude { phase: TRAIN }`) are dropped. Caffe wires layers by blob names (`bottom`/`top`,
in-place layers reuse their bottom as top); we wire by layer names, so each blob is
followed to the layer of ours that carries it. Every Caffe layer becomes one of ours with the
same name, except:

  - data layers (Data, ImageData, Input, DummyData, MemoryData, HDF5Data, top-level `input`)
    become our input `data`: the image shape from `input_shape`/`input_dim`/`shape { dim }`,
    or the transform's `crop_size` (Data and ImageData read their images from a database or
    a file list, so the prototxt does not say the channels: 3, Caffe's colour default;
    ImageData `is_color: false` or `force_gray` give 1; --input overrides);
  - ReLU / ELU / Sigmoid / TanH / AbsVal working in place on the output of a layer with a
    `neuron` key (conv, fc, pool, batchnorm) that nothing has read yet become its `neuron:`;
  - a Scale right after a BatchNorm is folded into our batchnorm (its weight and bias);
  - SoftmaxWithLoss becomes our softmax (the net's output, whose cost is the mean
    cross-entropy: Caffe's VALID normalisation); Accuracy and Silence are dropped.

Shapes and parameter counts are computed by Caffe's rules (conv: floor((in + 2 pad - k) / s)
+ 1; pooling: ceil((in + 2 pad - k) / s) + 1, one less if the last window would start in the
padding) and checked against our engine (engine.convert.checks). What cannot be expressed
exactly is refused with the file, line, layer and field, or, where only the initialisation or
a training setting is approximated, said in a notice.
"""
import math
import os
from dataclasses import dataclass

import layers as layer_types
from layers.pool import out_side as pool_side
from engine.config import INPUT_NAME, MAX_NAME
from engine.convert import prototxt
from engine.convert.checks import check_against_engine, check_key, check_layer
from engine.convert.common import Conversion, Converted, ConvertError, parse_chw
from engine.convert.writer import emit, number
from engine.errors import ConfigError

DATA_TYPES = {"Data", "ImageData", "Input", "DummyData", "MemoryData", "HDF5Data"}
NEURONS = {"ReLU": "relu", "Sigmoid": "logistic", "TanH": "tanh", "AbsVal": "abs", "ELU": "elu"}
HANDLERS = {"Convolution": "_conv", "InnerProduct": "_fc", "Pooling": "_pool", "LRN": "_lrn",
            "Dropout": "_dropout", "Concat": "_concat", "Eltwise": "_eltwise", "Softmax": "_softmax",
            "SoftmaxWithLoss": "_softmax", "Flatten": "_flatten", "Accuracy": "_dropped",
            "Silence": "_dropped", "BatchNorm": "_batchnorm", "Scale": "_scale", "PReLU": "_prelu",
            **{t: "_neuron" for t in NEURONS}, **{t: "_data" for t in DATA_TYPES}}
UNSUPPORTED = {
    "Bias": "per-channel bias", "BNLL": "BNLL", "Power": "power", "Exp": "exp", "Log": "log",
    "Threshold": "threshold", "Deconvolution": "transposed convolution", "Crop": "crop",
    "Reshape": "reshape", "Slice": "slice", "Split": "split", "Tile": "tile", "Reduction": "reduction",
    "ArgMax": "argmax", "MVN": "mean-variance normalisation", "SPP": "spatial pyramid pooling",
    "Im2col": "im2col", "Embed": "embedding", "LSTM": "LSTM", "RNN": "RNN", "Python": "Python",
    "EuclideanLoss": "Euclidean loss", "HingeLoss": "hinge loss", "InfogainLoss": "infogain loss",
    "SigmoidCrossEntropyLoss": "sigmoid cross-entropy loss", "ContrastiveLoss": "contrastive loss",
    "MultinomialLogisticLoss": "multinomial logistic loss", "WindowData": "window data",
}
# NetParameter and SolverParameter fields that change nothing we convert (display,
# snapshots, testing, the device): accepted and dropped with one notice.
NET_IGNORED = {"name", "force_backward", "debug_info", "state", "profile_info", "profile_iter",
               "profile_test"}
SOLVER_IGNORED = {"net", "train_net", "test_net", "test_iter", "test_interval", "test_compute_loss",
                  "test_initialization", "display", "average_loss", "snapshot", "snapshot_prefix",
                  "snapshot_format", "snapshot_diff", "snapshot_after_train", "solver_mode", "device_id",
                  "debug_info", "test_state", "train_state", "layer_wise_reduce", "weights", "power"}


def parse_caffe_input(text):
    """`C,H,W` (the --input flag for a Caffe net) as three positive ints; H and W may differ."""
    return parse_chw(text, "3,227,227")


def convert_caffe(path, input_shape=None, solver=None, name=None, epochs=None, train_images=None):
    """Convert a Caffe net file (and optionally its solver file) to our YAML.

    input_shape: (C, H, W), else taken from the file (see the module's doc). epochs and
    train_images turn the solver's iterations into epochs (see `_train_settings`).
    Returns a Conversion; raises ConvertError (a ConfigError) naming file, line, layer, field.
    """
    for what, v in (("epochs", epochs), ("train_images", train_images)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{what} must be a positive integer, got {v!r}")
    return _Caffe(os.fspath(path), input_shape, solver and os.fspath(solver)).run(name, epochs, train_images)


def read_prototxt(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConvertError(f"cannot read: {e.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise ConvertError("not a text file (a binary .caffemodel is not a net definition)", file=path) from None
    return prototxt.parse(text, file=path)


@dataclass
class Blob:
    carrier: str          # our layer holding it ("data": the input)
    shape: tuple          # (C, H, W) or (D,); None for labels
    label: bool = False
    readers: int = 0      # how many of our layers read it so far


class _Caffe:
    def __init__(self, path, input_shape, solver_path):
        self.path, self.solver_path = path, solver_path
        self.flag_shape = None if input_shape is None else tuple(input_shape)
        self.root = read_prototxt(path)
        self.solver = read_prototxt(solver_path) if solver_path else None
        self.blobs = {}
        self.out = []
        self.by_name = {}
        self.names = set()
        self.input_shape = None
        self.batch = None
        self.augment = {}
        self.output = None        # our softmax
        self.notices = []
        self.fused, self.dropped, self.test_only, self.renamed = [], [], [], []
        self.inits, self.bias_decay, self.no_bias = [], [], []
        self.batchnorms, self.scaled = [], []
        self.frozen_bn = {}       # our batchnorm -> its parameters Caffe does not learn (no Scale / bias)
        self.consumed = {}        # blob -> why it is gone (a BatchNorm output that a Scale replaced)
        self.stds = {}            # our layer -> the std of Caffe's weight filler, checked against ours

    # ---- driver ---------------------------------------------------------------------------
    def run(self, name, epochs, train_images):
        root = self.root
        if root.has("layers"):
            root.fail("layers", "the old V1 format (`layers { type: CONVOLUTION }`): upgrade it with Caffe's "
                                "upgrade_net_proto_text tool first")
        net_name = name or root.get("name", "str", None) or os.path.splitext(os.path.basename(self.path))[0]
        self._net_inputs()
        layer_msgs = root.messages("layer")
        if not layer_msgs:
            root.fail(None, "no `layer { ... }` in the file: not a Caffe net definition")
        for i, lm in enumerate(layer_msgs):
            lm.layer = lm.get("name", "str", None) or f"#{i + 1}"
            self._layer(lm)
        for key in root.unused():
            if key not in NET_IGNORED:
                root.fail(key, "not a NetParameter field that we can convert")
        if self.input_shape is None:
            root.fail(None, "no data layer or `input` found: give the image shape with --input C,H,W")
        if self.output is None:
            root.fail(None, "no Softmax or SoftmaxWithLoss layer: our nets end in a softmax, the output "
                            "and its cost")
        train = self._train_settings(epochs, train_images)
        self._summarise()
        num_params = sum(c.params for c in self.out)
        header = [f"Converted by `python -m engine convert` from the Caffe net {self.path}"
                  + (f" and solver {self.solver_path}" if self.solver_path else ""),
                  f"input {'x'.join(map(str, self.input_shape))} (--input {','.join(map(str, self.input_shape))}); "
                  f"{num_params:,} parameters" + (f" ({self._caffe_params():,} in Caffe)"
                                                  if self.no_bias or self.frozen_bn else ", as in Caffe")]
        text = emit(net_name, self.input_shape, self.out, train, header + self.notices)
        for node in check_against_engine(self.out, text, "Caffe"):
            std = self.stds.get(node.name)
            if std is not None and not math.isclose(node.layer.weight_std(), std, rel_tol=1e-9):
                self.by_name[node.name].fail("init", f"our weights would have std {node.layer.weight_std():.6g} "
                                                     f"where Caffe's filler has {std:.6g}")
        return Conversion(text=text, notices=self.notices, layers=self.out, num_params=num_params)

    def _caffe_params(self):
        return sum(c.params for c in self.out) - sum(c.cfg["filters" if c.type == "conv" else "outputs"]
                                                     for c in self.out if c.name in self.no_bias) \
            - sum(self.frozen_bn.values())

    def _summarise(self):
        n = self.notices
        if self.test_only:
            n.insert(0, f"TEST-phase layers dropped: {', '.join(self.test_only)}")
        if self.dropped:
            n.append(f"dropped: {', '.join(self.dropped)} (`python -m engine test` reports top-1 and top-5 "
                     "errors)")
        if self.fused:
            n.append(f"in-place activations fused into the layer before them (`neuron:`): {', '.join(self.fused)}")
        if self.renamed:
            n.append(f"renamed (our layer-name rules): {', '.join(self.renamed)}")
        if self.inits:
            n.append(f"initialisation approximated (our weights are N(0, init_w), biases init_b): "
                     f"{'; '.join(self.inits)}")
        if self.no_bias:
            n.append(f"bias_term: false on {', '.join(self.no_bias)}: our layers always have biases, so "
                     "these start at 0 and never learn (lr_b: 0): the same function, "
                     f"{sum(self.by_name[x].cfg.get('filters', self.by_name[x].cfg.get('outputs')) for x in self.no_bias):,} "
                     "more parameters counted")
        if self.batchnorms:
            n.append(f"BatchNorm -> batchnorm: {', '.join(self.batchnorms)}; Caffe's mean and variance blobs "
                     "(and its count of them) are our running_mean and running_var state, not parameters; "
                     "momentum = 1 - moving_average_fraction: the same exponential average, but Caffe's "
                     "starts at the first batch's statistics and ours at mean 0, variance 1")
        if self.scaled:
            n.append(f"Scale layers folded into the batchnorm before them (weight, bias): {', '.join(self.scaled)}")
        if self.frozen_bn:
            n.append(f"BatchNorm without a Scale (or a Scale without bias_term) on {', '.join(self.frozen_bn)}: "
                     "our batchnorm always has a weight and a bias, so these stay 1 and 0 (lr_w, lr_b 0): the "
                     f"same function, {sum(self.frozen_bn.values()):,} more parameters counted")

    def _phase_ok(self, lm):
        """Whether the layer is in the TRAIN-phase net (Caffe's NetStateRule, phase only)."""
        def matches(rule):
            for key in rule.unused():
                if key != "phase":
                    rule.fail(key, "only `phase` rules are supported (not stages or levels)")
            phase = rule.get("phase", "enum", None)
            if phase not in (None, "TRAIN", "TEST"):
                rule.fail("phase", f"must be TRAIN or TEST, got {phase}")
            return phase in (None, "TRAIN")
        include, exclude = lm.messages("include"), lm.messages("exclude")
        if include and exclude:
            lm.fail("exclude", "a layer may give include or exclude rules, not both (Caffe)")
        if include:
            return any(matches(r) for r in include)
        return not any(matches(r) for r in exclude)

    def _layer(self, lm):
        t = lm.get("type", "str")
        phase = lm.get("phase", "enum", None)       # set by Caffe itself in saved nets; TEST: skip
        if not self._phase_ok(lm) or phase == "TEST":
            self.test_only.append(lm.layer)
            lm.used.update(k for k, _, _ in lm.fields)
            return
        if t in UNSUPPORTED:
            lm.fail("type", f"Caffe's '{t}' ({UNSUPPORTED[t]}) layer has no equivalent here")
        if t not in HANDLERS:
            lm.fail("type", f"unknown Caffe layer type '{t}'")
        for key in ("loss_weight",):
            for v in lm.get_all(key, "float"):
                if v != 1.0 and t == "SoftmaxWithLoss":
                    lm.fail(key, "a loss weight other than 1 is not supported (scale base_lr instead)")
                if v != 0.0 and t != "SoftmaxWithLoss":
                    lm.fail(key, "only the loss layer may have a loss weight")
        getattr(self, HANDLERS[t])(lm, t)
        self._check_unused(lm)

    def _check_unused(self, msg):
        for key in msg.unused():
            if key == "engine":                     # CAFFE or CUDNN: the same arithmetic
                continue
            msg.fail(key, f"not a field of a Caffe {self._type_of(msg)} layer that we can convert")
        for name, v, _ in msg.fields:
            if isinstance(v, prototxt.Message) and name in msg.used:
                self._check_unused(v)

    @staticmethod
    def _type_of(msg):
        while msg.layer is None:
            msg = msg.parent
        return next((v.text for k, v, _ in msg.fields if k == "type" and not isinstance(v, prototxt.Message)),
                    "?")

    # ---- blobs and names ---------------------------------------------------------------------
    def _bottoms(self, lm, count=None, least=1):
        names = lm.get_all("bottom", "str")
        if count is not None and len(names) != count:
            lm.fail("bottom" if names else None, f"a {lm.get('type', 'str')} layer takes {count} bottom "
                                                 f"blob{'s' if count > 1 else ''}, got {len(names)}")
        if len(names) < least:
            lm.fail("bottom" if names else None, f"needs at least {least} bottom blobs, got {len(names)}")
        blobs = []
        for n in names:
            if n in self.consumed:
                lm.fail("bottom", f"bottom blob {self.consumed[n]}")
            if n not in self.blobs:
                lm.fail("bottom", f"bottom blob '{n}' is not the top of any TRAIN-phase layer above "
                                  "(Caffe needs layers in order)")
            blobs.append(self.blobs[n])
        return names, blobs

    def _image_bottoms(self, lm, blobs, names):
        for n, b in zip(names, blobs):
            if b.label:
                lm.fail("bottom", f"reads the labels '{n}': only the loss (and Accuracy) may")
        if len({b.carrier for b in blobs}) != len(blobs):
            lm.fail("bottom", "reads the same blob twice")
        return [b.carrier for b in blobs]

    def _tops(self, lm, count=1):
        tops = lm.get_all("top", "str")
        if len(tops) != count:
            lm.fail("top" if tops else None, f"a {lm.get('type', 'str')} layer has {count} top blob"
                                             f"{'s' if count > 1 else ''}, got {len(tops)}")
        return tops

    def _our_name(self, wish):
        name = "".join(c if c.isprintable() else "_" for c in wish)[:MAX_NAME] or "layer"
        if name == INPUT_NAME:
            name = f"{INPUT_NAME}_"
        base, i = name, 1
        while name in self.names:
            name = f"{base}.{i}"
            i += 1
        if name != wish:
            self.renamed.append(f"{wish!r} -> {name!r}")
        self.names.add(name)
        return name

    def _new(self, lm, our_type, inputs, shape, params=0):
        c = Converted(name=self._our_name(lm.layer), type=our_type, inputs=inputs, gpu=0, section=lm,
                      shape=None if shape is None else tuple(shape), params=params)
        return c

    def _add(self, layer, bottoms, tops=None):
        check_layer(layer, f"Caffe's '{layer.section.get('type', 'str')}'")
        for b in bottoms:
            b.readers += 1
        self.out.append(layer)
        self.by_name[layer.name] = layer
        for t in tops if tops is not None else self._tops(layer.section):
            self.blobs[t] = Blob(layer.name, layer.shape)
        return layer

    # ---- data ------------------------------------------------------------------------------
    def _net_inputs(self):
        """The deploy form: top-level `input: "data"` with `input_shape { dim }` or `input_dim`."""
        root = self.root
        names = root.get_all("input", "str")
        shapes = [s.get_all("dim", "int") for s in root.messages("input_shape")]
        dims = root.get_all("input_dim", "int")
        if not names:
            for key in ("input_shape", "input_dim"):
                if root.has(key):
                    root.fail(key, "given without `input: \"name\"`")
            return
        if dims:
            if len(dims) != 4 * len(names):
                root.fail("input_dim", f"{len(dims)} values for {len(names)} input(s): 4 each (N, C, H, W)")
            shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
        if len(shapes) != len(names):
            root.fail("input", f"{len(names)} input(s) with {len(shapes)} shape(s)")
        self._set_input(root, "input", names, shapes[0], root.line_of("input"))

    def _set_input(self, msg, key, tops, dims, line=None, batch=None):
        """tops[0] is the image (dims N, C, H, W, or C, H, W found otherwise), the rest labels."""
        if self.input_shape is not None:
            msg.fail(key, "a second data layer in the TRAIN phase: our nets have one input")
        if dims is not None:
            if len(dims) == 4:
                batch, dims = dims[0], tuple(dims[1:])
            if len(dims) != 3 or min(dims) < 1:
                msg.fail(key, f"the image shape must be N, C, H, W (positive), got {list(dims)}", line=line)
        if self.flag_shape is not None:
            if dims is not None and tuple(dims) != self.flag_shape:
                self.notices.append(f"--input {','.join(map(str, self.flag_shape))} replaces the file's "
                                    f"{'x'.join(map(str, dims))}")
            dims = self.flag_shape
        if dims is None:
            msg.fail(None, "the image shape is not in the file (no crop_size, new_height/new_width or "
                           "shape): give it with --input C,H,W")
        self.input_shape = tuple(dims)
        if batch:
            self.batch = batch
        self.blobs[tops[0]] = Blob(INPUT_NAME, self.input_shape)
        for t in tops[1:]:
            self.blobs[t] = Blob(None, None, label=True)

    def _data(self, lm, t):
        tops = lm.get_all("top", "str")
        if not tops:
            lm.fail(None, "a data layer without a top blob")
        dims, batch, channels_known = None, None, True
        transform = lm.message("transform_param", None)
        gray = False
        if transform is not None:
            transform.used.update(k for k, _, _ in transform.fields)
            crop = transform.get("crop_size", "int", 0)
            gray = transform.get("force_gray", "bool", False)
            scale = transform.get("scale", "float", 1.0)
            if scale != 1.0:
                self.augment["scale"] = scale
            if transform.get("mirror", "bool", False):
                self.augment["flip"] = True
            if crop:
                self.augment["crop"] = True
            if transform.has("mean_file") or transform.has("mean_value"):
                self.notices.append(f"{lm.layer}: Caffe's mean_file/mean_value are not used: our trainer "
                                    "subtracts the mean image of the training data (kept with the checkpoint)")
        else:
            crop = 0
        params = {"Data": "data_param", "ImageData": "image_data_param", "Input": "input_param",
                  "DummyData": "dummy_data_param", "MemoryData": "memory_data_param",
                  "HDF5Data": "hdf5_data_param"}[t]
        p = lm.message(params, None)
        if p is not None:
            p.used.update(k for k, _, _ in p.fields)       # sources, backends, shuffling: not ours
            batch = p.get("batch_size", "int", None)
        if t in ("Input", "DummyData"):
            shapes = [s.get_all("dim", "int") for s in p.messages("shape")] if p is not None else []
            if shapes:
                dims = shapes[0]
            elif p is not None and p.has("num"):
                dims = [p.get_all(k, "int")[0] for k in ("num", "channels", "height", "width")]
        elif t == "MemoryData" and p is not None:
            dims = [p.get(k, "int") for k in ("channels", "height", "width")]
        elif crop:
            channels = 1 if gray or (t == "ImageData" and p is not None and not p.get("is_color", "bool", True)) else 3
            channels_known = gray or t == "ImageData"
            dims = [channels, crop, crop]
        elif t == "ImageData" and p is not None and p.get("new_height", "int", 0) and p.get("new_width", "int", 0):
            dims = [1 if gray or not p.get("is_color", "bool", True) else 3,
                    p.get("new_height", "int"), p.get("new_width", "int")]
        if not channels_known and self.flag_shape is None:
            self.notices.append(f"{lm.layer}: a Caffe {t} layer reads its images from a database, so the "
                                f"file does not say their channels: 3 (colour) assumed; --input C,H,W "
                                "sets them")
        self._set_input(lm, "type", tops, dims, batch=batch)

    def _dropped(self, lm, t):
        lm.all("bottom")
        lm.all("top")
        if t == "Accuracy":
            lm.used.add("accuracy_param")
        self.dropped.append(f"{lm.layer} ({t})")

    # ---- weight layers ---------------------------------------------------------------------
    def _square(self, msg, key, default, what):
        """Caffe's `key` (repeated: one value, or h and w) or `key_h`/`key_w`, as one side."""
        hw = key.replace("_size", "")              # kernel_h, pad_h, stride_h
        if msg.has(f"{hw}_h") or msg.has(f"{hw}_w"):
            h, w = msg.get(f"{hw}_h", "int"), msg.get(f"{hw}_w", "int")
            at = f"{hw}_h"
        else:
            values = msg.get_all(key, "int")
            if len(values) > 2:
                msg.fail(key, f"{len(values)} values: only 2-D (one value, or height and width) is supported")
            h, w = (values * 2)[:2] if values else (default, default)
            at = key
        if h is None:
            msg.fail(None, f"missing required field '{key}' (or {hw}_h and {hw}_w)")
        if h != w:
            msg.fail(at, f"{h}x{w}: our {what} {'is' if key == 'kernel_size' else 'are'} the same in both "
                         "directions (square), a non-square one cannot be converted")
        return h

    def _weight_params(self, lm, layer, has_bias, our_bias=True):
        """`param { lr_mult decay_mult }` (weights, then biases) as lr_w, lr_b, wd; a Caffe layer
        without biases gets lr_b 0 (our bias frozen at 0), unless ours has none (our_bias)."""
        specs = lm.messages("param")
        if len(specs) > 1 + has_bias:
            lm.fail("param", f"{len(specs)} param blocks for {1 + has_bias} parameter blob(s)")
        values = []
        for s in specs:
            if s.has("name"):
                s.fail("name", "shared parameters (a named param) are not supported")
            values.append((s.get("lr_mult", "float", 1.0), s.get("decay_mult", "float", 1.0)))
        values += [(1.0, 1.0)] * (2 - len(values))
        (lr_w, wd), (lr_b, decay_b) = values
        for v, key in ((lr_w, "lr_mult"), (wd, "decay_mult"), (lr_b, "lr_mult")):
            if v < 0:
                lm.fail("param", f"{key} must be >= 0, got {v}")
        if not our_bias:
            lr_b = 1.0
        elif not has_bias:
            lr_b = 0.0
        elif decay_b != 0:
            self.bias_decay.append(f"{layer.name} ({decay_b:g})")
        layer.solver = {"lr_w": lr_w, "lr_b": lr_b, "wd": wd}

    def _fillers(self, msg, layer, fan_in, fan_out, has_bias):
        notes = []
        wf = msg.message("weight_filler", None)
        if wf is None:
            notes.append("no weight_filler (Caffe: zeros): init_w 0.01")
            std = None
        else:
            kind = wf.get("type", "str", "constant")
            for key in ("value", "std", "mean", "min", "max", "variance_norm", "sparse"):
                wf.all(key)
            if wf.get("sparse", "int", -1) >= 0:
                notes.append("sparse filler: dense")
            norm = wf.get("variance_norm", "enum", "FAN_IN")
            n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}.get(norm)
            if n is None:
                wf.fail("variance_norm", f"must be FAN_IN, FAN_OUT or AVERAGE, got {norm}")
            if kind == "gaussian":
                std = wf.get("std", "float", 1.0)
                if wf.get("mean", "float", 0.0) != 0.0:
                    notes.append("Gaussian mean other than 0: 0")
            elif kind == "msra":         # Caffe: N(0, 2/n); torch's kaiming_normal_ with relu's gain sqrt(2)
                std = math.sqrt(2.0 / n)
                init = {"FAN_IN": ("kaiming", "in"), "FAN_OUT": ("kaiming", "out")}.get(norm, ("xavier", None))
                layer.set("init", init[0], "weight_filler", msg)   # xavier: sqrt(2) sqrt(2/(in+out)), AVERAGE's
                if init[1] == "out":
                    layer.set("fan", "out", "weight_filler", msg)
                layer.set("nonlinearity", "relu", "weight_filler", msg)
                self.stds[layer.name] = std
                std = None
            elif kind == "xavier":      # Caffe: uniform +-sqrt(3/n), variance 1/n; ours draw Gaussians
                std = math.sqrt(1.0 / n)
                notes.append(f"xavier (uniform): a Gaussian of the same variance (std {std:.4g})")
            elif kind == "uniform":
                lo, hi = wf.get("min", "float", 0.0), wf.get("max", "float", 1.0)
                std = (hi - lo) / math.sqrt(12)
                notes.append(f"uniform [{lo:g}, {hi:g}]: a zero-mean Gaussian of std {std:.4g}")
            elif kind == "constant" and wf.get("value", "float", 0.0) == 0.0:
                std = 0.0
            else:
                notes.append(f"{kind} weight filler: init_w 0.01")
                std = None
        if std is not None:
            layer.set("init_w", float(std), "weight_filler", msg)
            self.stds[layer.name] = float(std)
        bf = msg.message("bias_filler", None) if has_bias else None
        if bf is not None:
            kind = bf.get("type", "str", "constant")
            for key in ("value", "std", "mean", "min", "max", "variance_norm", "sparse"):
                bf.all(key)
            if kind == "constant":
                value = bf.get("value", "float", 0.0)
                if value:
                    layer.set("init_b", value, "bias_filler", msg)
            else:
                notes.append(f"{kind} bias filler: biases 0")
        if notes:
            self.inits.append(f"{layer.name}: {', '.join(notes)}")

    def _conv(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        shape = blobs[0].shape
        p = lm.message("convolution_param")
        if len(shape) != 3:
            lm.fail("bottom", f"bottom '{names[0]}' is flat ({shape[0]} values): a convolution needs images")
        filters = p.get("num_output", "int")
        k = self._square(p, "kernel_size", None, "conv layer's kernels")
        pad = self._square(p, "pad", 0, "conv layer's paddings")
        s = self._square(p, "stride", 1, "conv layer's strides")
        g = p.get("group", "int", 1)
        bias = p.get("bias_term", "bool", True)
        if any(d != 1 for d in p.get_all("dilation", "int")):
            p.fail("dilation", "dilated convolution is not supported")
        if p.get("axis", "int", 1) != 1:
            p.fail("axis", "only axis 1 (channels) is supported")
        p.all("force_nd_im2col")
        if min(filters, k, s, g) < 1 or pad < 0:
            p.fail(None, "num_output, kernel_size, stride and group must be >= 1 and pad >= 0")
        c, h, w = shape
        if c % g or filters % g:
            p.fail("group", f"group {g} must divide the {c} input channels and num_output {filters}")
        if k > min(h, w) + 2 * pad:
            p.fail("kernel_size", f"kernel {k} is larger than the input {h}x{w} plus 2 x pad {pad}")
        out = ((h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1)     # Caffe: floor
        params = c // g * k * k * filters + filters                        # ours always has biases
        layer = self._new(lm, "conv", inputs, (filters,) + out, params)
        layer.set("filters", filters, "num_output", p)
        layer.set("size", k, "kernel_size", p)
        if s != 1:
            layer.set("stride", s, "stride", p)
        if pad:
            layer.set("padding", pad, "pad", p)
        if g != 1:
            layer.set("groups", g, "group", p)
        self._fillers(p, layer, c // g * k * k, filters * k * k, bias)     # Caffe: count/shape(0), /shape(1)
        self._weight_params(lm, layer, bias)
        if not bias:
            self.no_bias.append(layer.name)
        self._add(layer, blobs)

    def _fc(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        p = lm.message("inner_product_param")
        outputs = p.get("num_output", "int")
        bias = p.get("bias_term", "bool", True)
        if p.get("axis", "int", 1) != 1:
            p.fail("axis", "only axis 1 (each image flattened) is supported")
        p.all("transpose")              # only how the weight matrix is stored
        if outputs < 1:
            p.fail("num_output", "must be >= 1")
        d = math.prod(blobs[0].shape)
        layer = self._new(lm, "fc", inputs, (outputs,), d * outputs + outputs)
        layer.set("outputs", outputs, "num_output", p)
        self._fillers(p, layer, d, outputs, bias)
        self._weight_params(lm, layer, bias)
        if not bias:
            self.no_bias.append(layer.name)
        self._add(layer, blobs)

    # ---- other layers --------------------------------------------------------------------------
    def _pool(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        shape = blobs[0].shape
        if len(shape) != 3:
            lm.fail("bottom", f"bottom '{names[0]}' is flat: pooling needs images")
        c, h, w = shape
        p = lm.message("pooling_param", None) or prototxt.Message(lm.file, lm.line, "pooling_param", lm)
        mode = p.get("pool", "enum", "MAX")
        if mode not in ("MAX", "AVE"):
            p.fail("pool", f"{mode} pooling is not supported (MAX and AVE are)")
        whole = p.get("global_pooling", "bool", False)
        if whole:
            for key in ("kernel_size", "kernel_h", "kernel_w", "pad", "pad_h", "pad_w"):
                if p.has(key):
                    p.fail(key, "not with global_pooling")
            if h != w and mode == "MAX":
                p.fail("global_pooling", f"MAX over a {h}x{w} input: our pooling windows are square and "
                                         "our `global: true` averages")
            k, pad, s = h, 0, 1
        else:
            k = self._square(p, "kernel_size", None, "pooling windows")
            pad = self._square(p, "pad", 0, "pooling paddings")
            s = self._square(p, "stride", 1, "pooling strides")
        p.all("round_mode")
        rounding = p.get("round_mode", "enum", "CEIL")
        if rounding not in ("CEIL", "FLOOR"):
            p.fail("round_mode", f"must be CEIL or FLOOR, got {rounding}")
        if min(k, s) < 1 or pad < 0:
            p.fail(None, "kernel_size and stride must be >= 1 and pad >= 0")
        if not whole and k > min(h, w) + 2 * pad:
            p.fail("kernel_size", f"window {k} is larger than the input {h}x{w} plus 2 x pad {pad}")

        def caffe_side(n):          # pooling_layer.cpp
            rounded = -(-(n + 2 * pad - k) // s) if rounding == "CEIL" else (n + 2 * pad - k) // s
            out = rounded + 1
            if pad and (out - 1) * s >= n + pad:
                out -= 1
            return out
        out = (1, 1) if whole else (caffe_side(h), caffe_side(w))
        if pad > k // 2:
            p.fail(self._pad_key(p), f"pad {pad} with window {k}: our pool pads at most half the window "
                                     f"({k // 2}; PyTorch's limit), Caffe up to {k - 1}")
        if s > k:
            p.fail("stride", f"stride {s} larger than the window {k}: our pool layer forbids windows that "
                             "skip input")
        # Our ceil rule is Caffe's CEIL rule (PyTorch's ceil_mode, the padded last window dropped);
        # FLOOR is our `ceil: false` (Caffe's drop never fires there: pad < kernel). MAX never picks
        # a padded cell in either; AVE divides by the window clipped to the padded input (Caffe's
        # pool_size, taken before clipping to the image; our count_include_pad divisor).
        ceil = rounding == "CEIL" or all(pool_side(n, k, s, pad, True) == o for n, o in zip((h, w), out))
        ours = (1, 1) if whole else tuple(pool_side(n, k, s, pad, ceil) for n in (h, w))
        if ours != out:
            p.fail("round_mode", f"{rounding} gives {out[0]}x{out[1]} where our pool's rule gives "
                                 f"{ours[0]}x{ours[1]}")
        layer = self._new(lm, "pool", inputs, (c,) + out)
        layer.set("mode", "max" if mode == "MAX" else "avg", "pool", p)
        if whole and h != w:            # square planes keep the window form (the same arithmetic)
            layer.set("global", True, "global_pooling", p)
        else:
            layer.set("size", k, "kernel_size", p)
            layer.set("stride", s, "stride", p)
        if pad:
            layer.set("padding", pad, self._pad_key(p), p)
        if not ceil:
            layer.set("ceil", False, "round_mode", p)
        self._add(layer, blobs)

    @staticmethod
    def _pad_key(p):
        return "pad_h" if p.has("pad_h") else "pad"

    def _lrn(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        shape = blobs[0].shape
        if len(shape) != 3:
            lm.fail("bottom", f"bottom '{names[0]}' is flat: LRN needs images")
        p = lm.message("lrn_param", None) or prototxt.Message(lm.file, lm.line, "lrn_param", lm)
        size = p.get("local_size", "int", 5)
        alpha, beta = p.get("alpha", "float", 1.0), p.get("beta", "float", 0.75)
        k = p.get("k", "float", 1.0)
        region = p.get("norm_region", "enum", "ACROSS_CHANNELS")
        if size < 1 or size % 2 == 0:
            p.fail("local_size", f"must be odd (Caffe's LRN requires it), got {size}")
        if region == "ACROSS_CHANNELS":
            # Caffe: b = a / (k + alpha/size * sum over `size` maps centred on a's)^beta, the same
            # formula and window as our cmrnorm, and the same alpha (both divide it by size)
            layer = self._new(lm, "cmrnorm", inputs, shape)
            layer.set("k", k, "k", p)
        elif region == "WITHIN_CHANNEL":
            # Caffe: a * (1 + alpha/size^2 * sum over the size x size window)^-beta, its k unused
            # (a pipeline of AVE pooling with pad (size-1)/2 and a Power layer with shift 1)
            layer = self._new(lm, "rnorm", inputs, shape)
            layer.set("k", 1.0, "k", p)
            if p.has("k") and k != 1.0:
                self.notices.append(f"{lm.layer}: k {k:g} is ignored by Caffe's WITHIN_CHANNEL LRN (1 is used), "
                                    "as here")
        else:
            p.fail("norm_region", f"must be ACROSS_CHANNELS or WITHIN_CHANNEL, got {region}")
        layer.cfg = {"size": size, "alpha": alpha, "beta": beta, **layer.cfg}
        layer.origin.update(size=(p, "local_size"), alpha=(p, "alpha"), beta=(p, "beta"))
        self._add(layer, blobs)

    def _dropout(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        p = lm.message("dropout_param", None) or prototxt.Message(lm.file, lm.line, "dropout_param", lm)
        ratio = p.get("dropout_ratio", "float", 0.5)
        if not 0.0 <= ratio < 1.0:
            p.fail("dropout_ratio", f"must be in [0, 1), got {ratio}")
        if p.get("scale_train", "bool", True):          # inverted: kept units x 1/(1 - ratio)
            layer = self._new(lm, "dropout", inputs, blobs[0].shape)
            layer.set("rate", ratio, "dropout_ratio", p)
        else:                                           # classic: x (1 - ratio) at test
            layer = self._new(lm, "dropout2", inputs, blobs[0].shape)
            layer.set("keep", 1.0 - ratio, "dropout_ratio", p)
        self._add(layer, blobs)

    def _neuron(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        tops = self._tops(lm)
        fn = self._neuron_name(lm, t)
        producer = self.by_name.get(blobs[0].carrier)
        if (tops[0] == names[0] and producer is not None and blobs[0].readers == 0
                and "neuron" in layer_types.get(producer.type).keys and "neuron" not in producer.cfg):
            producer.set("neuron", fn, "type", lm)
            check_key(producer, layer_types.get(producer.type), "neuron")
            init = {k: producer.cfg.pop(k) for k in ("init", "fan", "nonlinearity", "init_w", "init_b")
                    if k in producer.cfg}
            producer.cfg.update(init)              # shown beside the geometry, before the init keys
            self.fused.append(f"{lm.layer} ({t})")
            return
        layer = self._new(lm, "neuron", inputs, blobs[0].shape)
        layer.set("fn", fn, "type")
        self._add(layer, blobs, tops)

    @staticmethod
    def _neuron_name(lm, t):
        """Our neuron for Caffe's ReLU (negative_slope: leaky[a]), ELU (alpha: elu[a]), ..."""
        p = lm.message(f"{t.lower()}_param", None) if t != "AbsVal" else None    # relu_param, ...
        if t == "ReLU" and p is not None and p.get("negative_slope", "float", 0.0) != 0.0:
            a = p.get("negative_slope", "float")
            if a < 0:
                p.fail("negative_slope", f"{a:g}: our leaky[a] takes a slope >= 0")
            return f"leaky[{number(a)}]"
        if t == "ELU" and p is not None and p.get("alpha", "float", 1.0) != 1.0:
            a = p.get("alpha", "float")
            if a <= 0:
                p.fail("alpha", f"{a:g}: our elu[a] takes a > 0")
            return f"elu[{number(a)}]"
        return NEURONS[t]

    def _prelu(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        shape = blobs[0].shape
        p = lm.message("prelu_param", None) or prototxt.Message(lm.file, lm.line, "prelu_param", lm)
        shared = p.get("channel_shared", "bool", False)
        layer = self._new(lm, "prelu", inputs, shape, 1 if shared else shape[0])    # Caffe: one per channel
        if shared:
            layer.set("shared", True, "channel_shared", p)
        f = p.message("filler", None)
        kind = "constant" if f is None else f.get("type", "str", "constant")
        if f is not None:
            for key in ("value", "std", "mean", "min", "max", "variance_norm", "sparse"):
                f.all(key)
        slope = 0.25 if f is None else f.get("value", "float", 0.0)     # Caffe's default filler: 0.25
        if kind != "constant":
            self.inits.append(f"{layer.name}: {kind} slope filler: every slope 0.25")
            slope = 0.25
        if slope != 0.25:
            layer.set("init_slope", slope, "filler", p)
        self._weight_params(lm, layer, False, our_bias=False)
        self._add(layer, blobs)

    # ---- batch normalisation: Caffe's BatchNorm (statistics) + Scale (learned scale, shift) ------
    def _batchnorm(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        inputs = self._image_bottoms(lm, blobs, names)
        shape = blobs[0].shape
        p = lm.message("batch_norm_param", None) or prototxt.Message(lm.file, lm.line, "batch_norm_param", lm)
        if len(lm.messages("param")) > 3:
            lm.fail("param", "a BatchNorm layer has 3 blobs (mean, variance, their count)")
        for spec in lm.messages("param"):              # Caffe never learns these (it forces lr_mult 0)
            spec.used.update(k for k, _, _ in spec.fields)
        eps = p.get("eps", "float", 1e-5)
        fraction = p.get("moving_average_fraction", "float", 0.999)
        if eps <= 0:
            p.fail("eps", f"must be > 0, got {eps:g}")
        if not 0 <= fraction < 1:
            p.fail("moving_average_fraction", f"{fraction:g}: our running statistics are an exponential "
                                              "average, momentum = 1 - fraction in (0, 1]")
        channels = shape[0]
        layer = self._new(lm, "batchnorm", inputs, shape, 2 * channels)
        if eps != 1e-5:
            layer.set("eps", eps, "eps", p)
        # Caffe: stat = fraction * stat + batch (and divides by the summed weights); ours: running =
        # (1 - momentum) running + momentum batch: the same weights, but ours starts from 0 and 1
        layer.set("momentum", float(f"{1.0 - fraction:.12g}"), "moving_average_fraction", p)
        layer.solver = {"lr_w": 0.0, "lr_b": 0.0, "wd": 1.0}        # no Scale after it: 1 and 0, frozen
        self.frozen_bn[layer.name] = 2 * channels
        if p.get("use_global_stats", "bool", False):
            self.notices.append(f"{layer.name}: use_global_stats: true makes Caffe normalise by the stored "
                                "statistics in training too; ours trains on the batch's statistics (and uses "
                                "the running ones at test, Caffe's default)")
        self.batchnorms.append(layer.name)
        self._add(layer, blobs)

    def _scale(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        self._image_bottoms(lm, blobs, names)
        bn = self.by_name.get(blobs[0].carrier)
        if bn is None or bn.type != "batchnorm" or bn.name not in self.frozen_bn:
            lm.fail("type", "a Scale layer is converted only right after a BatchNorm (as our batchnorm's "
                            "weight and bias); a Scale of its own has no equivalent here")
        if blobs[0].readers or "neuron" in bn.cfg:
            lm.fail("bottom", f"the BatchNorm output '{names[0]}' is used before this Scale: our batchnorm "
                              "scales and shifts before anything reads it")
        p = lm.message("scale_param", None) or prototxt.Message(lm.file, lm.line, "scale_param", lm)
        if p.get("axis", "int", 1) != 1 or p.get("num_axes", "int", 1) != 1:
            p.fail("axis" if p.get("axis", "int", 1) != 1 else "num_axes",
                   "only one factor per channel (axis 1, num_axes 1) is supported")
        bias = p.get("bias_term", "bool", False)              # Caffe's default: no bias
        for key, default in (("filler", 1.0), ("bias_filler", 0.0)):
            f = p.message(key, None)
            if f is None or (key == "bias_filler" and not bias):
                continue
            for k in ("value", "std", "mean", "min", "max", "variance_norm", "sparse"):
                f.all(k)
            if f.get("type", "str", "constant") != "constant" or f.get("value", "float", 0.0) != default:
                self.inits.append(f"{bn.name}: Scale {key} {f.get('type', 'str', 'constant')}: "
                                  f"{'weights 1' if default else 'biases 0'}")
        self._weight_params(lm, bn, bias)
        del self.frozen_bn[bn.name]
        if not bias:
            self.frozen_bn[bn.name] = bn.shape[0]               # the shift stays 0
        self.scaled.append(f"{lm.layer} -> {bn.name}")
        tops = self._tops(lm)
        if tops[0] != names[0]:
            self.consumed[names[0]] = f"'{names[0]}' is the BatchNorm output before Scale '{lm.layer}', " \
                                      f"which our batchnorm '{bn.name}' includes"
        self.blobs[tops[0]] = Blob(bn.name, bn.shape)

    def _concat(self, lm, t):
        names, blobs = self._bottoms(lm, least=1)
        inputs = self._image_bottoms(lm, blobs, names)
        p = lm.message("concat_param", None)
        if p is not None and p.get("axis", "int", p.get("concat_dim", "int", 1)) != 1:
            p.fail("axis" if p.has("axis") else "concat_dim", "only axis 1 (channels) is supported")
        shapes = [b.shape for b in blobs]
        if all(len(s) == 3 for s in shapes):
            if len({s[1:] for s in shapes}) > 1:
                lm.fail("bottom", "bottoms of different heights and widths: "
                                  + ", ".join("x".join(map(str, s)) for s in shapes))
            layer = self._new(lm, "concat", inputs, (sum(s[0] for s in shapes),) + shapes[0][1:])
        elif all(len(s) == 1 for s in shapes):
            layer = self._new(lm, "concat", inputs, (sum(s[0] for s in shapes),))
            layer.set("mode", "flat", "bottom")
        else:
            lm.fail("bottom", "joins images and flat vectors: Caffe's Concat needs the same number of axes")
        self._add(layer, blobs)

    def _eltwise(self, lm, t):
        names, blobs = self._bottoms(lm, least=2)
        inputs = self._image_bottoms(lm, blobs, names)
        shapes = {b.shape for b in blobs}
        if len(shapes) > 1:
            lm.fail("bottom", "bottoms of different shapes: " + ", ".join("x".join(map(str, b.shape)) for b in blobs))
        p = lm.message("eltwise_param", None) or prototxt.Message(lm.file, lm.line, "eltwise_param", lm)
        op = p.get("operation", "enum", "SUM")
        coeffs = p.get_all("coeff", "float")
        p.all("stable_prod_grad")
        if op == "SUM":
            if coeffs and len(coeffs) != len(names):
                p.fail("coeff", f"{len(coeffs)} coefficients for {len(names)} bottoms")
            layer = self._new(lm, "eltsum", inputs, blobs[0].shape)
            if any(c != 1.0 for c in coeffs):
                layer.set("coeffs", coeffs, "coeff", p)
        elif op == "MAX":
            if coeffs:
                p.fail("coeff", "coefficients only go with SUM")
            layer = self._new(lm, "eltmax", inputs, blobs[0].shape)
        elif op == "PROD":
            p.fail("operation", "the element-wise product (PROD) is not supported (SUM and MAX are)")
        else:
            p.fail("operation", f"must be SUM, MAX or PROD, got {op}")
        self._add(layer, blobs)

    def _flatten(self, lm, t):
        names, blobs = self._bottoms(lm, count=1)
        self._image_bottoms(lm, blobs, names)
        p = lm.message("flatten_param", None)
        if p is not None and (p.get("axis", "int", 1), p.get("end_axis", "int", -1)) != (1, -1):
            p.fail(None, "only axis 1 to the end (each image to a vector) is supported")
        tops = self._tops(lm)
        self.blobs[tops[0]] = Blob(blobs[0].carrier, (math.prod(blobs[0].shape),))  # our fc, concat flatten

    def _softmax(self, lm, t):
        loss = t == "SoftmaxWithLoss"
        names, blobs = self._bottoms(lm, count=2 if loss else 1)
        if loss and not blobs[1].label:
            lm.fail("bottom", f"the second bottom '{names[1]}' must be the labels of a data layer")
        inputs = self._image_bottoms(lm, blobs[:1], names[:1])
        if self.output is not None:
            lm.fail("type", f"a second softmax or loss (after '{self.output.name}'): our nets have one output "
                            "and one cost")
        shape = blobs[0].shape
        if len(shape) == 3 and shape[1] * shape[2] > 1:
            lm.fail("bottom", f"bottom '{names[0]}' is {'x'.join(map(str, shape))}: Caffe takes a softmax "
                              "at every pixel, ours over one vector per image")
        p = lm.message("softmax_param", None)
        if p is not None and p.get("axis", "int", 1) != 1:
            p.fail("axis", "only axis 1 is supported")
        lp = lm.message("loss_param", None)
        if lp is not None:
            if lp.has("ignore_label"):
                lp.fail("ignore_label", "ignored labels are not supported")
            if not lp.get("normalize", "bool", True):
                lp.fail("normalize", "a summed (not averaged) loss is not supported")
            if lp.get("normalization", "enum", "VALID") not in ("VALID", "BATCH_SIZE", "FULL"):
                lp.fail("normalization", "only the mean over the batch (VALID, BATCH_SIZE) is supported")
        tops = lm.get_all("top", "str")
        if len(tops) > 1:
            lm.fail("top", "a second top (the probabilities beside the loss) is not supported")
        layer = self._new(lm, "softmax", inputs, (math.prod(shape),))
        self.output = layer
        self._add(layer, blobs[:1], tops)

    # ---- the solver ----------------------------------------------------------------------------
    def _train_settings(self, epochs, train_images):
        """train: from the data layer (batch, augmentation) and the solver file.

        Caffe counts iterations (max_iter, stepsize, stepvalue), we count epochs: an epoch
        is train_images / batch iterations (--train-images). Without it, --epochs E says
        that max_iter is E epochs, and the steps fall at the same fractions of the run."""
        train = {}
        if self.batch:
            train["batch"] = self.batch
        s = self.solver
        if s is None:
            if epochs:
                train["epochs"] = epochs
            if self.augment:
                train["augment"] = dict(self.augment)
            return train
        kind = s.get("type", "str", None) or s.get("solver_type", "enum", "SGD")
        if kind.upper() != "SGD":
            s.fail("type" if s.has("type") else "solver_type", f"the {kind} solver is not supported: "
                                                                "SGD with momentum is")
        if s.get("regularization_type", "str", "L2") != "L2":
            s.fail("regularization_type", "only L2 weight decay is supported")
        if s.get("clip_gradients", "float", -1.0) >= 0:
            s.fail("clip_gradients", "gradient clipping is not supported")
        if s.has("net_param") or s.has("train_net_param"):
            s.fail("net_param" if s.has("net_param") else "train_net_param",
                   "a net inside the solver file: give it as the net file")
        base = s.get("base_lr", "float")
        if base <= 0:
            s.fail("base_lr", f"must be > 0, got {base}")
        momentum = s.get("momentum", "float", 0.0)
        decay = s.get("weight_decay", "float", 0.0)
        if not 0 <= momentum < 1:
            s.fail("momentum", f"must be in [0, 1), got {momentum}")
        iter_size = s.get("iter_size", "int", 1)
        if iter_size > 1:
            if not self.batch:
                s.fail("iter_size", "needs the batch size from the data layer")
            train["batch"] = self.batch * iter_size
            self.notices.append(f"iter_size {iter_size}: one batch of {self.batch * iter_size} (Caffe averages the "
                                f"gradients of {iter_size} batches of {self.batch}: the same step)")
        policy = s.get("lr_policy", "str", "fixed")
        gamma = s.get("gamma", "float", None)
        max_iter = s.get("max_iter", "int", None)
        if s.has("random_seed") and s.get("random_seed", "int") >= 0:
            train["seed"] = s.get("random_seed", "int")
        per_epoch = None
        if train_images:
            if not self.batch:
                s.fail(None, "turning iterations into epochs needs the batch size, which the data layer "
                             "does not give")
            per_epoch = train_images / (train["batch"] if iter_size > 1 else self.batch)
        elif epochs and max_iter:
            per_epoch = max_iter / epochs

        def to_epochs(iters, key):
            if per_epoch is None:
                s.fail(key, f"{iters:,} iterations: turning them into epochs needs the number of training "
                            "images (--train-images N) or --epochs (what max_iter is)")
            return max(1, round(iters / per_epoch)) if key == "max_iter" else round(iters / per_epoch)

        if epochs:
            train["epochs"] = epochs
        elif max_iter:
            train["epochs"] = to_epochs(max_iter, "max_iter")
        train.update(lr=base, momentum=momentum, weight_decay=decay)
        if policy == "fixed":
            train["schedule"] = "constant"
        elif policy in ("step", "multistep"):
            if gamma is None:
                s.fail("lr_policy", f"the {policy} policy needs gamma")
            if policy == "step":
                step = s.get("stepsize", "int")
                if step < 1:
                    s.fail("stepsize", "must be >= 1")
                if not max_iter:
                    s.fail("stepsize", "a step policy needs max_iter (where the steps end)")
                points, key = list(range(step, max_iter, step)), "stepsize"
            else:
                points, key = s.get_all("stepvalue", "int"), "stepvalue"
            milestones = [to_epochs(i, key) for i in points]
            if per_epoch is not None and any(abs(i / per_epoch - m) > 1e-9 for i, m in zip(points, milestones)):
                self.notices.append(f"approximated: the learning rate drops at the start of epochs "
                                    f"{milestones}, Caffe's at iterations {points} (we change it between epochs)")
            train["schedule"] = {"type": "step", "epochs": milestones, "factor": gamma}
        elif policy == "exp":
            if gamma is None or not max_iter:
                s.fail("lr_policy", "the exp policy needs gamma and max_iter")
            # Caffe: base_lr * gamma^iter; ours: lr * factor^-progress over the run
            try:
                factor = gamma ** -max_iter
            except (OverflowError, ZeroDivisionError):
                factor = math.inf
            if not 0 < factor < math.inf:
                s.fail("gamma", f"gamma {gamma:g} over {max_iter:,} iterations is out of range")
            train["schedule"] = {"type": "exp", "factor": factor}
        else:
            s.fail("lr_policy", f"the {policy!r} policy is not supported (fixed, step, multistep, exp)")
        for key in ("stepsize", "stepvalue", "gamma", "type", "solver_type", "momentum2", "delta"):
            s.all(key)
        unused = [k for k in s.unused() if k not in SOLVER_IGNORED]
        if unused:
            s.fail(unused[0], "not a solver field that we can convert")
        if self.bias_decay and decay:
            self.notices.append(f"approximated: our biases get no weight decay; Caffe decays these "
                                f"(decay_mult): {', '.join(self.bias_decay)}")
        if self.augment:
            train["augment"] = dict(self.augment)
        return train
