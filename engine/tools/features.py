"""`python -m engine features NET.yaml --checkpoint CKPT --layer fc7 -o feats.npy`:
a layer's activations as image embeddings (cuda-convnet's --write-features).

Every image of the split (validation by default) is prepared as at test time (the
checkpoint's mean, scale and centre crop) and run through the net in batches; the chosen
layer's output, flattened, is one row of float32 [N, D]. Several layers (`fc7a,fc7b`,
the two columns of AlexNet's fc7) are concatenated in the order given.

Output: `feats.npy` with the integer labels beside it in `feats-labels.npy`, or with a
`.npz` name one archive holding `features`, `labels` and `class_names`. Rows are written
to a memory-mapped temporary file as they come (ImageNet's 50,000 x 4096 floats need not
fit in memory) and renamed into place at the end.
"""
import os
import tempfile

import numpy as np

from engine.config import INPUT_NAME
from engine.errors import ConfigError
from engine.checkpoint import atomic_path


def labels_path(out):
    """Where the labels of a .npy feature file go: feats.npy -> feats-labels.npy."""
    base, _ = os.path.splitext(out)
    return base + "-labels.npy"


def parse_layers(net, text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = [n.name for n in net.layers]
    unknown = [n for n in names if n not in known and n != INPUT_NAME]
    if not names or unknown:
        what = f"unknown layer(s) {', '.join(unknown)}" if unknown else "no layer given"
        raise ConfigError(f"{what} in net '{net.name}'; its layers: {', '.join(known)}", key="--layer")
    return names


def feature_width(net, names):
    shapes = {n.name: n.output_shape for n in net.layers}
    shapes[INPUT_NAME] = net.input_shape
    return sum(int(np.prod(shapes[n])) for n in names)


def extract(net, source, names, split="val", batch=128):
    """Yield (features [n, D] float32, labels [n]) batch by batch."""
    for raw, labels in source.batches(split, batch):
        acts = net.forward(net.preprocess.test(raw), outputs=names)
        yield np.concatenate([acts[n].reshape(len(labels), -1) for n in names], axis=1), labels


def run(net_path, checkpoint, layer, out, data=None, split="val", batch=128, log=print, plugins=False,
        overrides=None):
    """Write the features (and labels); returns (rows, width). `overrides`: `--set` values
    for the net (engine.config.parse_net), on top of those the checkpoint was trained with."""
    from engine.datasets import DataError, open_source
    from engine.net import load
    if not out.endswith((".npy", ".npz")):
        raise ConfigError(f"the output {out!r} must end in .npy (labels beside it) or .npz", key="-o")
    net = load(net_path, checkpoint=checkpoint, plugins=plugins, overrides=overrides)
    names = parse_layers(net, layer)
    spec = data or net.data_spec
    if spec is None:
        raise DataError("the checkpoint does not say which data it was trained on: give --data")
    source = open_source(spec, net.input_shape, seed=0, num_classes=net.num_classes)
    expected = source.num_val if split == "val" else source.num_train
    width = feature_width(net, names)
    labels = np.empty(expected, np.int64)
    fd, scratch = tempfile.mkstemp(prefix=".tmp-features-", suffix=".npy",
                                   dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    try:
        rows = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(expected, width))
        n = 0
        for feats, lab in extract(net, source, names, split, batch):
            rows[n:n + len(lab)] = feats
            labels[n:n + len(lab)] = lab
            n += len(lab)
        rows.flush()
        if out.endswith(".npy"):
            with atomic_path(labels_path(out)) as tmp:
                np.save(tmp, labels[:n])
        with atomic_path(out) as tmp:
            if out.endswith(".npz"):
                np.savez(tmp, features=rows[:n], labels=labels[:n],
                         class_names=np.array(net.class_names or [], dtype=str))
            elif n == expected:
                del rows
                os.replace(scratch, tmp)
            else:                    # unreadable images were skipped: keep the rows read
                np.save(tmp, rows[:n])
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    extra = "" if out.endswith(".npz") else f" (labels in {labels_path(out)})"
    log(f"wrote {out}{extra}: {n} {source.name} {split} images x {width} features of {' + '.join(names)}")
    return n, width
