"""`python -m engine import-torch WEIGHTS.pth NET.yaml -o RUN_DIR`: PyTorch weights as a checkpoint.

The .pth file is read with `torch.load(weights_only=True)`, which refuses anything but
tensors and plain containers (no arbitrary unpickling); a dict holding a "state_dict"
(a training checkpoint) and DataParallel's "module." prefixes are accepted too. Layouts
are the same as ours (conv [F, C/groups, k, k], fc [out, in], flattening C, H, W), so
the arrays are copied as they are.

Which tensor goes where, without a --map: by name when the state_dict holds every key of
the net's state_dict (parameters and layer state such as batchnorm's "<layer>.running_mean"),
as for nets/resnet18|34.yaml and googlenet.yaml, whose layer names are torchvision's module
names; otherwise by position, the k-th module with parameters in the state_dict (its
"<module>.weight" and "<module>.bias", and a BatchNorm's running statistics) to the k-th
layer with parameters of the net in execution order, as torchvision's AlexNet and VGG
(features.0, ..., classifier.6) line up with nets/alexnet-torchvision.yaml and vgg16|19.yaml.
BatchNorm's `num_batches_tracked` has no counterpart (a fixed momentum here) and is skipped.
A --map file (YAML or JSON) names the pairs instead: `{conv1: features.0, fc8.weight:
classifier.6.weight, ...}`, a layer name to a module prefix or one parameter (or state
array) to one tensor. Every mismatch (a count, a missing or left over tensor, a shape) is
collected and reported in one error.

The checkpoint written (`0.json` + `0.npz`) is complete: parameters, zero momentum, the
mean image and preprocessing, class names, and the net file's training settings, so that
`engine.load(NET, checkpoint=RUN_DIR)`, `test`, `predict`, `features` and
`train --resume RUN_DIR` (fine-tuning) all take it.
"""
import os

import numpy as np

from engine.config import INPUT_NAME
from engine.errors import ConfigError

# torchvision's ImageNet input: RGB / 255, minus this mean, divided by this std, per channel
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
PARAM_NAMES = ("weight", "bias")
SKIPPED = "num_batches_tracked"        # BatchNorm's step count: our momentum is fixed, no counterpart


def read_state_dict(path):
    """{name: float32 array} in the file's order, or ConfigError saying why not."""
    try:
        import torch
    except ImportError:
        raise ConfigError("import-torch needs PyTorch to read .pth files: pip install torch "
                          "(or pip install -e '.[torch]')") from None
    if not os.path.isfile(path):
        raise ConfigError("no such file", file=path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:                      # UnpicklingError, RuntimeError, EOFError, zip errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read it as PyTorch weights with weights_only=True ({first}); "
                          "save model.state_dict(), not the model object", file=path) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"holds a {type(obj).__name__}, not a state_dict (a dict of named tensors)",
                          file=path)
    state, bad = {}, []
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            bad.append(str(name))
            continue
        key = name[len("module."):] if name.startswith("module.") else name
        state[key] = value.detach().to(torch.float32).numpy()
    if bad:
        raise ConfigError(f"entries that are not tensors: {', '.join(bad[:8])}; expected a state_dict",
                          file=path)
    return state


def layer_keys(node):
    """The keys a layer fills: "<param>" names, then "<state>" names (batchnorm's running_mean...)."""
    return list(node.layer.param_shapes()) + list(node.layer.state_shapes())


def state_names(net):
    """Suffixes of the net's layer state ("running_mean", "running_var"; none for most nets)."""
    return {s for node in net.layers for s in node.layer.state_shapes()}


def net_keys(net):
    """Every key import-torch fills, in state_dict order."""
    return [f"{node.name}.{k}" for node in net.layers for k in layer_keys(node)]


def name_map(net, state):
    """{our key: the same key} when the weights hold every key of the net, else None."""
    ours = net_keys(net)
    return {k: k for k in ours} if all(k in state for k in ours) else None


def positional_map(net, state):
    """({our key: their key}, problems): the k-th parameterised module to the k-th layer."""
    problems = []
    modules = []                       # module prefixes in file order
    stateful = state_names(net)
    # without layer state in the net, running statistics are reported as they always were
    with_module = stateful | {SKIPPED} if stateful else set()
    for key in state:
        prefix, _, pname = key.rpartition(".")
        if pname in with_module:
            continue                   # goes with its module's weight and bias
        if pname not in PARAM_NAMES:
            if stateful:
                problems.append(f"'{key}' is not a weight, bias or {' or '.join(sorted(stateful))}")
            else:
                problems.append(f"'{key}' is not a weight or bias (layers like BatchNorm have no counterpart here)")
        elif prefix not in modules:
            modules.append(prefix)
    ours = [n for n in net.layers if n.layer.param_shapes()]
    if len(ours) != len(modules):
        problems.append(f"the net has {len(ours)} layers with parameters ({', '.join(n.name for n in ours)}), "
                        f"the weights {len(modules)} modules ({', '.join(modules)}); give a --map file")
    mapping = {}
    for node, prefix in zip(ours, modules):
        for pname in layer_keys(node):
            mapping[f"{node.name}.{pname}"] = f"{prefix}.{pname}" if prefix else pname
    return mapping, problems


def by_name_hint(net, state):
    """A problem saying which of the net's keys the weights lack by name, when they hold some
    of them (a torchvision model of another depth, or without GoogLeNet's heads), else None."""
    ours = net_keys(net)
    lacking = [k for k in ours if k not in state]
    if len(lacking) == len(ours):
        return None
    more = f" and {len(lacking) - 8} more" if len(lacking) > 8 else ""
    return (f"by name, {len(ours) - len(lacking)} of the net's {len(ours)} tensors are in the weights, "
            f"missing {', '.join(lacking[:8])}{more}")


def read_map(path):
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)             # JSON is YAML too
    except OSError as e:
        raise ConfigError(f"cannot read the --map file: {e.strerror}", file=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML/JSON: {e}", file=path) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError("a --map file is a mapping of our names to theirs, e.g. "
                          "{conv1: features.0, fc8.weight: classifier.6.weight}", file=path)
    return data


def named_map(net, pairs):
    """({our key: their key}, problems) from a --map file's pairs."""
    problems, mapping = [], {}
    layer_names = {n.name for n in net.layers}
    for ours in pairs:
        layer = ours if ours in layer_names else ours.rpartition(".")[0]
        if layer not in layer_names:
            problems.append(f"--map names '{ours}', which is no layer (or <layer>.weight/.bias) of the net")
    for node in net.layers:
        for pname in layer_keys(node):
            key = f"{node.name}.{pname}"
            if key in pairs:
                mapping[key] = pairs[key]
            elif node.name in pairs:
                mapping[key] = f"{pairs[node.name]}.{pname}"
            else:
                problems.append(f"'{key}' is not mapped to any tensor")
    return mapping, problems


def convert(net, state, pairs=None):
    """The net's state dict (parameters and layer state) filled from `state`; ConfigError
    listing every mismatch."""
    if pairs is not None:
        mapping, problems = named_map(net, pairs)
    else:
        mapping, problems = name_map(net, state), []
        if mapping is None:
            mapping, problems = positional_map(net, state)
    params, used = {}, set()
    expected = {k: v.shape for k, v in net.state_dict().items()}
    for ours, theirs in mapping.items():
        if theirs not in state:
            problems.append(f"'{ours}' <- '{theirs}': no such tensor in the weights")
            continue
        used.add(theirs)
        if state[theirs].shape != expected[ours]:
            problems.append(f"'{ours}' <- '{theirs}': shape {list(state[theirs].shape)}, the net's is "
                            f"{list(expected[ours])}")
            continue
        params[ours] = state[theirs]
    fillable = set(PARAM_NAMES) | state_names(net)
    left = [k for k in state if k not in used and k.rpartition(".")[2] in fillable]
    if left:
        problems.append(f"tensors not used: {', '.join(left)}")
    if problems and pairs is None:
        hint = by_name_hint(net, state)
        if hint:
            problems.append(hint)
    if problems:
        raise ConfigError(f"the weights do not fit net '{net.name}': " + "; ".join(problems))
    return params


def fold_input_std(net, params, std):
    """Divide the weights of the layers reading the input by a per-channel std, so that
    inputs scaled by one number (ours) meet weights trained on inputs divided by std[c]."""
    c = net.input_shape[0]
    std = np.asarray(std, np.float32)
    for node in net.layers:
        if INPUT_NAME not in node.inputs:
            continue
        w = params.get(f"{node.name}.weight")
        conv_like = w is not None and w.ndim == 4 and w.shape[1] == c
        fc_like = w is not None and w.ndim == 2 and w.shape[1] == int(np.prod(net.input_shape))
        if node.inputs != [INPUT_NAME] or not (conv_like or fc_like):
            raise ConfigError(f"cannot fold a per-channel std into layer '{node.name}' ({node.type}): it must "
                              "read only the input, with all its channels (no groups)", layer=node.name)
        params[f"{node.name}.weight"] = (w.reshape(w.shape[0], c, -1) / std[None, :, None]).reshape(w.shape)
    return params


def parse_mean(text, channels):
    """--mean: a .npy file ([C] or [C, H, W]) or C comma-separated pixel values."""
    if text.endswith(".npy"):
        try:
            return np.load(text, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the mean image: {e}", file=text) from None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != channels:
        raise ConfigError(f"--mean must be a .npy file or {channels} comma-separated values, got {text!r}")
    return np.array(values, np.float32)


def read_classes(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ConfigError(f"cannot read the class names: {e.strerror}", file=path) from None


def write_checkpoint(out, net, params, mean, scale, class_names, source):
    """A run folder `out` holding checkpoint 0 of the imported weights; returns its JSON path.
    `net` must come from a net file or YAML text (its text is stored with the checkpoint)."""
    from engine import checkpoint, settings
    from engine.datasets.augment import Preprocess
    from engine.train import FORMAT
    if os.path.isdir(out) and checkpoint.list_checkpoints(out):
        raise ConfigError(f"{out} already holds checkpoints; choose another -o")
    try:
        pre = Preprocess(net.input_shape, mean, scale=scale)
    except ValueError as e:
        raise ConfigError(f"--mean/--scale: {e}") from None
    if class_names is not None and len(class_names) != net.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a net with {net.num_classes} outputs")
    s = settings.resolve(net.spec.train, file=net.spec.file)
    arrays = {f"param/{k}": v for k, v in params.items()}       # layer state too, as Trainer.save
    learned = net.parameters()
    arrays.update({f"velocity/{k}": np.zeros_like(v) for k, v in params.items() if k in learned})
    arrays["mean"] = pre.mean
    meta = {"format": FORMAT, "net_text": net.spec.text, "net_name": net.name,
            "net_file": net.spec.file, "plugin_dir": net.spec.plugin_dir, "epoch": 0, "batch": 0,
            "overrides": net.spec.overrides,
            "settings": s,
            "schedule": settings.make_schedule(s).state(), "rng": None, "preprocess": pre.to_json(),
            "class_names": class_names, "num_classes": net.num_classes, "metrics": [],
            "partial_loss": None, "imported_from": {"path": os.path.abspath(source), "sha256": checkpoint.sha256_of(source)}}
    return checkpoint.save(out, checkpoint.tag_for(0), arrays, meta)


def run(weights, net_path, out, map_path=None, torchvision_input=False, mean=None, scale=None,
        classes=None, log=print, plugins=False, overrides=None):
    """`overrides`: `--set` values for the net (engine.config.parse_net), stored with the checkpoint."""
    from engine.net import load
    net = load(net_path, plugins=plugins, overrides=overrides)
    state = read_state_dict(weights)
    params = convert(net, state, read_map(map_path) if map_path else None)
    c = net.input_shape[0]
    mean_arr, scale_v = np.zeros(c, np.float32), 1.0
    if torchvision_input:
        if c != 3:
            raise ConfigError(f"--torchvision-input is for RGB input; net '{net.name}' has {c} channel(s)")
        params = fold_input_std(net, params, TORCHVISION_STD)
        mean_arr, scale_v = np.array(TORCHVISION_MEAN, np.float32) * 255, 1.0 / 255
    if mean is not None:
        mean_arr = parse_mean(mean, c)
    if scale is not None:
        scale_v = scale
    path = write_checkpoint(out, net, params, mean_arr, scale_v,
                            read_classes(classes) if classes else None, weights)
    learned = net.parameters()
    log(f"wrote {path}: {len(params)} tensors, {sum(p.size for k, p in params.items() if k in learned):,} parameters "
        f"from {weights}; input (pixels - mean) x {scale_v:g}" + (" with torchvision's std folded into "
                                                                  "the first layer" if torchvision_input else ""))
    return path
