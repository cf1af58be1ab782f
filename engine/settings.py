"""The `train:` section of a net file (and the command-line flags that override it)."""
from layers.base import Key, LayerError

from engine.config import suggest
from engine.errors import ConfigError
from engine.solver import Schedule
from engine.yamlio import line_of

TRAIN_KEYS = {
    "data": Key(str, None, doc="digits | synthetic | a cuda-convnet batch folder | an ImageNet-layout folder"),
    "epochs": Key(int, 10, low=1, doc="passes over the training data"),
    "batch": Key(int, 128, low=1, doc="mini-batch size"),
    "lr": Key(float, 0.01, low=0.0, low_open=True, doc="base learning rate"),
    "momentum": Key(float, 0.9, low=0.0, high=0.999999),
    "weight_decay": Key(float, 0.0005, low=0.0),
    "schedule": Key(dict, None, doc="constant | {type: step|exp|linear|dexp|plateau, ...}"),
    "augment": Key(dict, None, doc="{scale, crop, flip, pca}; defaults depend on the data source"),
    "test_freq": Key(int, 1, low=1, doc="validate every N epochs (and after the last)"),
    "seed": Key(int, 0, low=0),
    "keep": Key(int, None, low=1, doc="keep only the last N epoch checkpoints plus the best one by "
                "validation error, deleting older ones (default: keep every checkpoint)"),
}
SCHEDULE_KEYS = {
    "type": Key(str, "constant", choices=Schedule.KINDS),
    "epochs": Key(list, None, doc="step: epochs at which lr is multiplied by factor"),
    "factor": Key(float, None, low=0.0, low_open=True),
    "steps": Key(int, 4, low=1),
    "patience": Key(int, 2, low=1),
    "threshold": Key(float, 1e-3, low=0.0),
}
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
    sched = settings["schedule"] or {"type": "constant"}
    sched = _check_mapping(sched, SCHEDULE_KEYS, "train.schedule", file)
    ms = sched.get("epochs")
    if ms is not None and not all(isinstance(m, int) and m >= 0 for m in ms):
        raise ConfigError("must be a list of epoch numbers", file=file, key="schedule.epochs")
    if sched.get("type") == "step" and not ms:
        raise ConfigError("a step schedule needs `epochs: [...]`, the epochs at which lr drops",
                          file=file, key="schedule.epochs")
    settings["schedule"] = sched
    settings["augment"] = _check_mapping(settings["augment"] or {}, AUGMENT_KEYS, "train.augment", file)
    return settings


def make_schedule(settings):
    s = settings["schedule"]
    kw = {k: s[k] for k in ("epochs", "factor", "steps", "patience", "threshold") if k in s}
    return Schedule(settings["lr"], kind=s.get("type", "constant"), total_epochs=settings["epochs"], **kw)
