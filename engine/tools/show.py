"""`python -m engine show RUN`: what cuda-convnet's shownet.py showed, as PNG files.

--filters LAYER   the layer's filters: a colour tile per filter when it reads 3 channels, a grey
                  tile per filter for 1 channel, else a row per filter with a grey tile per
                  channel; each filter scaled to its own min..max (cc2's --norm-filters).
--cost            training and validation loss, and validation top-1/top-5 error, per epoch.
--preds           validation images with the net's top-5 classes as bars, the true class green.
"""
import math
import os

import numpy as np

from engine.errors import ConfigError
from engine.tools import canvas

MAX_FILTERS = 64
MAX_CHANNELS = 32
TILE_PX = 48          # filters are enlarged to about this many pixels a side...
GRID_PX = 320         # ...or more, so that a grid of few filters is this wide


def zoom_for(cols, side):
    """The integer enlargement of side x side tiles in a grid `cols` wide."""
    return max(1, round(TILE_PX / side), GRID_PX // (cols * side))


# ---- filters -------------------------------------------------------------------
def filter_array(net, layer):
    """The layer's weights as images [F, C, h, w], or ConfigError saying why they are not."""
    with_weights = [n.name for n in net.layers if "weight" in n.layer.param_shapes()]
    try:
        node = net.layer(layer)
    except KeyError:
        raise ConfigError(f"no layer named '{layer}'; layers with filters: {', '.join(with_weights)}") from None
    if node.name not in with_weights:
        raise ConfigError(f"layer '{layer}' ({node.type}) has no weights; layers with filters: "
                          f"{', '.join(with_weights)}")
    w = net.state_dict()[f"{layer}.weight"]
    if w.ndim == 4:
        return w
    shapes = node.layer.input_shapes
    if w.ndim == 2 and len(shapes) == 1 and len(shapes[0]) == 3:
        return w.reshape((w.shape[0],) + tuple(shapes[0]))     # an fc layer reading an image
    raise ConfigError(f"layer '{layer}' ({node.type}): weights of shape {list(w.shape)} are not "
                      "images (show conv layers, or an fc layer reading a [C, H, W] input)")


def _scaled(filters):
    """Each filter to [0, 255] over its own min..max."""
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.round((filters - lo) / span * 255), 0, 255).astype(np.uint8)


def filters_image(net, layer, max_filters=MAX_FILTERS, max_channels=MAX_CHANNELS):
    """A PIL image of the layer's filters with a title."""
    w = filter_array(net, layer)
    n_f, n_c, h, wd = w.shape
    shown = _scaled(w[:max_filters].astype(np.float64))
    if n_c == 3:
        tiles, cols, how = shown.transpose(0, 2, 3, 1), math.ceil(math.sqrt(len(shown))), "in colour (RGB)"
    elif n_c == 1:
        tiles, cols, how = shown[:, 0], math.ceil(math.sqrt(len(shown))), "grey"
    else:
        c = min(n_c, max_channels)
        tiles, cols = shown[:, :c].reshape(-1, h, wd), c
        how = f"a row per filter, a tile per input channel ({c} of {n_c})" if c < n_c else \
            "a row per filter, a tile per input channel"
    zoom = zoom_for(cols, max(h, wd))
    node = net.layer(layer)
    count = f"{len(shown)} of {n_f}" if len(shown) < n_f else f"{n_f}"
    lines = [f"{net.name} / {layer} ({node.type}): {count} filters of {n_c}x{h}x{wd}, {how}",
             "each filter scaled to its own min..max (black..white)"]
    return canvas.with_title(canvas.tile_grid(tiles, cols, zoom=zoom), lines)


# ---- cost curves ---------------------------------------------------------------------
def cost_image(metrics, title):
    """Two panels: train/val loss, and val top-1/top-5 error, against epoch."""
    from PIL import Image, ImageDraw
    if not metrics:
        raise ConfigError("the checkpoint holds no per-epoch metrics yet (train at least one epoch)")
    epochs = [m["epoch"] for m in metrics]

    def col(key):
        return [m.get(key) for m in metrics]
    img = Image.new("RGB", (1000, 420), canvas.BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((16, 10), title, fill=canvas.INK, font=canvas.font(16))
    c = canvas.SERIES
    canvas.plot_panel(d, (0, 40, 500, 420), [("train", epochs, col("train_loss"), c[0]),
                                             ("validation", epochs, col("val_loss"), c[1])],
                      "cross-entropy loss" if any("val_top1" in m for m in metrics) else "cost", "loss")
    canvas.plot_panel(d, (500, 40, 1000, 420), [("top-1", epochs, col("val_top1"), c[3]),
                                                 ("top-5", epochs, col("val_top5"), c[2])],
                      "validation error", "error", percent=True)
    return img


# ---- predictions ----------------------------------------------------------------------
def pick_predictions(net, source, count=8, seed=0, only_errors=False, batch=64):
    """[(raw image [C, H, W], label, probabilities)] for `count` random validation images
    (with only_errors, the first `count` misclassified ones in a random order)."""
    picked = []
    for raw, labels in source.batches("val", batch, rng=np.random.default_rng(seed)):
        probs = net.forward(net.preprocess.test(raw))
        for image, label, p in zip(raw, labels, probs):
            if only_errors and int(np.argmax(p)) == int(label):
                continue
            picked.append((image, int(label), p))
            if len(picked) == count:
                return picked
    return picked


def _display(image, side):
    """A raw [C, H, W] image as an RGB PIL image fitted into side x side."""
    from PIL import Image
    arr = np.asarray(image)
    arr = arr if arr.dtype == np.uint8 else canvas.to_uint8(arr)
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)[..., :3]).convert("RGB")
    scale = side / max(im.size)
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)


def preds_image(picks, class_names, title, cols=4, top=5):
    from PIL import Image, ImageDraw
    side, bar_w, cell_w, cell_h = 112, 150, 112 + 24 + 150 + 70, 112 + 40
    rows = max(1, math.ceil(len(picks) / cols))
    img = Image.new("RGB", (cols * cell_w + 20, rows * cell_h + 50), canvas.BACKGROUND)
    d = ImageDraw.Draw(img)
    fnt, small = canvas.font(13), canvas.font(12)
    d.text((16, 12), title, fill=canvas.INK, font=canvas.font(16))

    def name(k):
        n = class_names[k] if class_names and k < len(class_names) else str(k)
        return n if len(n) <= 16 else n[:15] + "…"
    for i, (image, label, probs) in enumerate(picks):
        r, c = divmod(i, cols)
        x0, y0 = 10 + c * cell_w, 46 + r * cell_h
        pic = _display(image, side)
        img.paste(pic, (x0, y0 + 24 + (side - pic.height) // 2))
        order = np.argsort(-probs)[:top]
        right = int(order[0]) == label
        head = f"true: {name(label)}" + ("" if label in order else f" (not in top {top})")
        d.text((x0, y0 + 2), head, fill=canvas.GOOD if right else canvas.BAD, font=fnt)
        bx = x0 + side + 12
        for j, k in enumerate(order):
            y = y0 + 26 + j * 22
            colour = canvas.GOOD if int(k) == label else (150, 170, 200)
            d.rectangle([bx, y, bx + max(1, round(float(probs[k]) * bar_w)), y + 16], fill=colour)
            d.text((bx + 4, y + 1), name(int(k)), fill=canvas.INK, font=small)
            d.text((bx + bar_w + 6, y + 1), f"{float(probs[k]):.1%}", fill=canvas.MUTED, font=small)
    return img


# ---- the verb ----------------------------------------------------------------------------
def run_folder(checkpoint):
    """The run folder of a checkpoint given as a folder or as one of its files."""
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint) or "."


def run(checkpoint, what, out=None, layer=None, net_path=None, data=None, count=8, seed=0,
        only_errors=False, log=print, plugins=False):
    """Write the PNG for `what` ("filters", "cost" or "preds") of a run folder or checkpoint;
    without `out`, into the run folder."""
    from engine import checkpoint as ckpt
    from engine.train import plural
    folder = run_folder(checkpoint)
    if what == "cost":
        meta = ckpt.verify(ckpt.resolve(checkpoint))
        name = meta.get("net_name", "net")
        out = out or os.path.join(folder, f"{name}-cost.png")
        last = meta["metrics"][-1] if meta.get("metrics") else {}
        val = f", last validation top-1 error {last['val_top1']:.2%}" if "val_top1" in last else ""
        epochs = plural(len(meta.get("metrics") or []), "epoch")
        image = cost_image(meta.get("metrics"), f"{name}: {epochs}{val}")
        canvas.save_png(image, out)
        log(f"wrote {out}")
        return out
    from engine.net import load
    net = load(net_path, checkpoint=checkpoint, plugins=plugins)
    if what == "filters":
        out = out or os.path.join(folder, f"{net.name}-filters-{layer}.png")
        canvas.save_png(filters_image(net, layer), out)
    else:
        from engine.datasets import DataError, open_source
        spec = data or net.data_spec
        if spec is None:
            raise DataError("the checkpoint does not say which data it was trained on: give --data")
        source = open_source(spec, net.input_shape, seed=0, num_classes=net.num_classes)
        picks = pick_predictions(net, source, count=count, seed=seed, only_errors=only_errors)
        if not picks:
            raise DataError(f"{source.name}: no validation images" + (" misclassified" if only_errors else ""))
        wrong = sum(int(np.argmax(p)) != lab for _, lab, p in picks)
        kind = "misclassified " if only_errors else ""
        title = (f"{net.name} on {len(picks)} {kind}{source.name} validation images: {wrong} wrong at top-1"
                 " (true class in green)")
        out = out or os.path.join(folder, f"{net.name}-preds.png")
        canvas.save_png(preds_image(picks, net.class_names, title), out)
    log(f"wrote {os.fspath(out)}")
    return out
