"""The `train:` section of a net file (and the command-line flags that override it)."""
from layers.base import Key, LayerError

from engine.config import suggest
from engine.errors import ConfigError
from engine.solver import OPTIMIZERS, Schedule
from engine.yamlio import line_of

class Choice(Key):
    """A key with named values whose error suggests the closest: `adan` -> did you mean 'adam'?
    (in the file and through `--set train.KEY=...`, which calls `check` too)."""

    def __init__(self, default, choices, doc=""):
        super().__init__(str, default, choices=choices, doc=doc)

    def check(self, key, value):
        try:
            return super().check(key, value)
        except LayerError as e:
            hint = suggest(value, self.choices) if isinstance(value, str) else ""
            raise LayerError(key, e.message + hint) from None


TRAIN_KEYS = {
    "data": Key(str, None, doc="digits | synthetic | a cuda-convnet batch folder | an ImageNet-layout folder"),
    "epochs": Key(int, 10, low=1, doc="passes over the training data"),
    "batch": Key(int, 128, low=1, doc="mini-batch size"),
    "lr": Key(float, 0.01, low=0.0, low_open=True, doc="base learning rate"),
    "optimizer": Choice("sgd", tuple(OPTIMIZERS), doc="sgd (cuda-convnet's) | nesterov | adam | adamw"),
    "momentum": Key(float, 0.9, low=0.0, high=0.999999, doc="sgd, nesterov"),
    "weight_decay": Key(float, 0.0005, low=0.0),
    "betas": Key(list, None, doc="adam, adamw: [beta1, beta2], default [0.9, 0.999]"),
    "eps": Key(float, 1e-8, low=0.0, low_open=True, doc="adam, adamw: added to the denominator"),
    "clip_norm": Key(float, None, low=0.0, low_open=True,
                     doc="clip the global gradient norm to this before each update (default: no clipping)"),
    "label_smoothing": Key(float, None, low=0.0, high=1.0,
                           doc="sets every cost layer's label_smoothing (default: the layers' own, 0)"),
    "schedule": Key(dict, None, doc="constant | {type: step|exp|linear|dexp|plateau|cosine, ...}"),
    "augment": Key(dict, None, doc="{scale, crop, flip, pca}; defaults depend on the data source"),
    "test_freq": Key(int, 1, low=1, doc="validate every N epochs (and after the last)"),
    "seed": Key(int, 0, low=0),
    "keep": Key(int, None, low=1, doc="keep only the last N epoch checkpoints plus the best one by "
                "validation error, deleting older ones (default: keep every checkpoint)"),
}
SCHEDULE_KEYS = {
    "type": Choice("constant", Schedule.KINDS),
    "epochs": Key(list, None, doc="step: epochs at which lr is multiplied by factor"),
    "factor": Key(float, None, low=0.0, low_open=True),
    "steps": Key(int, 4, low=1),
    "patience": Key(int, 2, low=1),
    "threshold": Key(float, 1e-3, low=0.0),
    "warmup_epochs": Key(float, 0.0, low=0.0, doc="cosine: epochs of linear warm-up (fractions allowed)"),
    "warmup_start": Key(float, 0.0, low=0.0, high=1.0, doc="cosine: the warm-up starts at lr * this"),
    "min_lr": Key(float, 0.0, low=0.0, doc="cosine: the lr reached at the last epoch"),
}
COSINE_ONLY = ("warmup_epochs", "warmup_start", "min_lr")
# train settings that go to the cost layers: each cost layer must have a key of that name
COST_KEYS = ("label_smoothing",)
AUGMENT_KEYS = {
    "scale": Key(float, None, low=0.0, low_open=True, doc="multiply pixels (after mean subtraction)"),
    "crop": Key(bool, None, doc="random crops of the input size in training, centre crop at test"),
    "flip": Key(bool, None, doc="random horizontal flips in training"),
    "pca": Key(float, None, low=0.0, doc="std of the PCA colour jitter's alphas (paper: 0.1)"),
    "shift": Key(int, None, low=0, doc="random translations of up to this many pixels in training"),
}


def _check_mapping(mapping, keys, where, file):
    out = {}
    for k, v in mapping.items():
        if k not in keys:
            raise ConfigError(f"unknown key in {where}{suggest(k, keys)}; valid: {', '.join(keys)}",
                              file=file, line=line_of(mapping, k), key=k)
        spec = keys[k]
        if spec.kind in (dict, list):
            ok = isinstance(v, spec.kind) or v is None
            if k == "schedule" and isinstance(v, str):
                v, ok = {"type": v}, True
            if not ok:
                raise ConfigError(f"must be a {spec.kind.__name__}", file=file, line=line_of(mapping, k), key=k)
            out[k] = v
            continue
        try:
            out[k] = None if v is None and spec.default is None else spec.check(k, v)
        except LayerError as e:
            raise ConfigError(e.message, file=file, line=line_of(mapping, k), key=k) from None
    return out


def _betas(value, file, line):
    if value is None:
        return [0.9, 0.999]
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in value))
    if not ok:
        raise ConfigError(f"must be two numbers in [0, 1), like [0.9, 0.999], got {value!r}",
                          file=file, line=line, key="betas")
    return [float(b) for b in value]


def resolve(train, overrides=None, file=None):
    """Validated settings: defaults <- the net file's `train:` <- non-None `overrides`."""
    settings = {k: spec.default for k, spec in TRAIN_KEYS.items()}
    settings.update(_check_mapping(train or {}, TRAIN_KEYS, "train", file))
    for k, v in (overrides or {}).items():
        if v is not None:
            try:
                settings[k] = TRAIN_KEYS[k].check(k, v) if TRAIN_KEYS[k].kind not in (dict, list) else v
            except LayerError as e:
                raise ConfigError(e.message, key=f"--{k.replace('_', '-')}") from None
    settings["betas"] = _betas(settings["betas"], file, line_of(train or {}, "betas"))
    sched = settings["schedule"] or {"type": "constant"}
    sched = _check_mapping(sched, SCHEDULE_KEYS, "train.schedule", file)
    ms = sched.get("epochs")
    if ms is not None and not all(isinstance(m, int) and m >= 0 for m in ms):
        raise ConfigError("must be a list of epoch numbers", file=file, key="schedule.epochs")
    if sched.get("type") == "step" and not ms:
        raise ConfigError("a step schedule needs `epochs: [...]`, the epochs at which lr drops",
                          file=file, key="schedule.epochs")
    kind = sched.get("type", "constant")
    for k in COSINE_ONLY:
        if k in sched and kind != "cosine":
            raise ConfigError(f"goes with a cosine schedule (type: cosine), not {kind}", file=file,
                              line=line_of(settings["schedule"] or {}, k), key=f"schedule.{k}")
    if kind == "cosine":
        if sched.get("warmup_epochs", 0.0) >= settings["epochs"]:
            raise ConfigError(f"the warm-up ({sched['warmup_epochs']:g} epochs) must end before the last "
                              f"epoch (epochs: {settings['epochs']})", file=file,
                              line=line_of(settings["schedule"], "warmup_epochs"), key="schedule.warmup_epochs")
        if sched.get("min_lr", 0.0) > settings["lr"]:
            raise ConfigError(f"min_lr ({sched['min_lr']:g}) is above lr ({settings['lr']:g}): the cosine "
                              "goes from lr down to min_lr", file=file, line=line_of(settings["schedule"], "min_lr"),
                              key="schedule.min_lr")
    settings["schedule"] = sched
    settings["augment"] = _check_mapping(settings["augment"] or {}, AUGMENT_KEYS, "train.augment", file)
    return settings


def make_schedule(settings):
    s = settings["schedule"]
    kw = {k: s[k] for k in ("epochs", "factor", "steps", "patience", "threshold") + COSINE_ONLY if k in s}
    return Schedule(settings["lr"], kind=s.get("type", "constant"), total_epochs=settings["epochs"], **kw)


def make_optimizer(settings, net):
    """The optimizer the settings name, on the net's backend, with its per-layer multipliers."""
    cls = OPTIMIZERS[settings["optimizer"]]
    common = dict(weight_decay=settings["weight_decay"], clip_norm=settings["clip_norm"])
    if settings["optimizer"] in ("adam", "adamw"):
        return cls.for_net(net, betas=settings["betas"], eps=settings["eps"], **common)
    return cls.for_net(net, momentum=settings["momentum"], **common)


def apply_cost_settings(spec, settings, file=None):
    """Write the COST_KEYS settings that are given into every cost layer of the net spec (before
    the net is built from it); a cost layer without such a key cannot take it: ConfigError."""
    from layers import registry
    for key in COST_KEYS:
        value = settings.get(key)
        if value is None:
            continue
        for layer in spec.layers:
            cls = registry.get(layer.type)
            if not cls.is_cost:
                continue
            if key not in cls.keys:
                raise ConfigError(f"the net's cost layer '{layer.name}' ({layer.type}) cannot take {key}: "
                                  f"only a cost layer with a `{key}` key can (a classification cost: softmax)",
                                  file=file, line=line_of(spec.train or {}, key), key=key)
            layer.cfg[key] = cls.keys[key].check(key, value)
