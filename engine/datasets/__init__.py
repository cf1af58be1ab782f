"""Training data sources and input preparation.

    src = open_source("digits", (1, 28, 28))
    pre = Preprocess((1, 28, 28), src.mean_image(), **src.default_augment)
    for raw, labels in src.batches("train", 128, rng=np.random.default_rng(0)):
        x = pre.train(raw, rng)            # float32 [N,1,28,28]

Sources (see open_source): the embedded MNIST digits, synthetic random data, cuda-convnet
batch folders (also CIFAR-10's python version) and ImageNet-layout image folders.
This package sits below the rest of the engine and imports no other engine module.
"""
import os
import re

from ._base import DataError, DataSource, log, shape_text
from .augment import PCA_PIXEL_UNIT, Preprocess, multiview_problem, prepare_images

__all__ = ["DataError", "DataSource", "Preprocess", "prepare_images", "open_source", "PCA_PIXEL_UNIT",
           "fit_warning", "multiview_problem"]

_FORMS = ("'digits' (4,000 MNIST digits shipped with the engine), 'synthetic' or 'synthetic:N' "
          "(random data, N training images), a cuda-convnet batch folder (containing batches.meta "
          "and data_batch_1..N), or an image folder (containing train/<class>/*.jpg|jpeg|png and "
          "val/<class>/...)")


def _input_shape(input_shape):
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise DataError(f"input_shape must be the net's (C, H, W), got {input_shape!r}") from None
    if min(c, h, w) < 1:
        raise DataError(f"input_shape must be positive, got {input_shape!r}")
    return c, h, w


def _check_fits(name, image_shape, input_shape):
    c, h, w = input_shape
    sc, sh, sw = image_shape
    if c != sc:
        raise DataError(f"{name} has {shape_text(image_shape)} images ({sc} channel(s)) but the net's input is "
                        f"{shape_text(input_shape)} ({c} channel(s)); pick a net whose data layer has "
                        f"{sc} channel(s), or another data source")
    if h > sh or w > sw:
        raise DataError(f"{name} has {shape_text(image_shape)} images, smaller than the net's input "
                        f"{shape_text(input_shape)}; pick a net whose input is at most {sh}x{sw}, "
                        "or another data source")


FIT_RATIO = 4     # images with more than this many times the net input's area get a warning


def fit_warning(src, input_shape):
    """One line when the images differ a lot from the net input, else None: colour files fed
    to a one-channel net (turned grey), or images of more than FIT_RATIO times the input's
    area (the net sees patches of them, never a whole image). Says the numbers, what will
    happen, and the `--set input.shape=...` that would feed whole images."""
    c, h, w = input_shape
    sc, sh, sw = src.image_shape
    ratio = (sh * sw) / (h * w)
    files = src.peek() if hasattr(src, "peek") else []
    colour_files = bool(files) and 2 * sum(col for _, _, col in files) > len(files)
    to_grey = c == 1 and colour_files
    if not to_grey and ratio <= FIT_RATIO:
        return None
    if files:
        fw, fh, _ = files[0]
        side = getattr(src, "side", sh)
        how = "blown up" if min(fw, fh) < side else "shorter side resized"
        images = (f"{'colour' if colour_files else 'grey'} images (e.g. {fw}x{fh}) stored as "
                  f"{shape_text(src.image_shape)} ({how} to {side}, centre-cropped)")
    else:
        images = f"{shape_text(src.image_shape)} images"
    happens = []
    if to_grey:
        happens.append("they are turned grey")
    if ratio > FIT_RATIO:
        patch = "random" if src.default_augment.get("crop") else "centre"
        happens.append(f"the net sees {patch} {h}x{w} patches of them ({1 / ratio:.1%} of each image), "
                       "never a whole image")
    want_c = 3 if colour_files else c
    side = round(min(sh, sw) * 7 / 8) if files and min(sh, sw) >= 64 else min(sh, sw)
    return (f"warning: {src.name}: {images}, but the net's input is {c}x{h}x{w}: {' and '.join(happens)}. "
            f"To feed whole {'colour ' if want_c == 3 else ''}images, give the net a larger input, e.g. "
            f"--set input.shape=[{want_c},{side},{side}] (`summary` shows whether its layers suit that)"
            + (f", or use a net made for photos: nets/alexnet.yaml --set fc8.outputs={src.num_classes}"
               if files and want_c == 3 else ""))


def _warn_fit(src, input_shape):
    text = fit_warning(src, input_shape)
    if text:
        log.warning("%s", text)


def open_source(spec, input_shape, seed=0, num_classes=None):
    """Open a data source for a net whose input is `input_shape` = (C, H, W).

    spec is one of:
      "digits"            4,000 MNIST digits, 1x28x28 (first 3,400 train, last 600 val);
      "synthetic[:N]"     random float32 images of exactly input_shape, N (default 1280)
                          training and min(256, N/5) validation images, deterministic from `seed`;
                          num_classes defaults to 1000 for 3-channel inputs of 200 px or
                          more, else 10;
      a folder with batches.meta      cuda-convnet / CIFAR-10 python batches;
      a folder with train/<class>/    ImageNet layout, decoded to side max(256, H, W).
    Raises DataError (one line: what, which file, what to do) for anything else, or when
    the images have a different channel count than the net or are smaller than its input.
    Logs one warning (logger "engine.datasets") when the images differ a lot from the net
    input: colour files for a grey net, or over FIT_RATIO times its area (fit_warning).
    """
    input_shape = _input_shape(input_shape)
    if isinstance(spec, str):
        m = re.fullmatch(r"synthetic(?::(\d+))?", spec.strip())
        if spec.strip() == "digits":
            from .memory import DigitsSource
            src = DigitsSource()
            _check_fits("digits", src.image_shape, input_shape)
            return src
        if m:
            from .memory import SyntheticSource
            n = int(m.group(1)) if m.group(1) else 1280
            if n < 1:
                raise DataError(f"synthetic:{n}: the training count must be >= 1")
            # a fifth as many validation images, at most 256: a smoke run stays quick
            return SyntheticSource(input_shape, seed=seed, num_train=n, num_val=min(256, max(1, n // 5)),
                                   num_classes=num_classes)
        if spec.strip().startswith("synthetic"):
            raise DataError(f"bad data source {spec!r}: write 'synthetic' or 'synthetic:N' with N a "
                            "positive integer")
    try:
        path = os.fspath(spec)
    except TypeError:
        raise DataError(f"bad data source {spec!r}: expected {_FORMS}") from None
    if not os.path.exists(path):
        raise DataError(f"data source {path!r} is not a known name and no such file or folder exists; "
                        f"expected {_FORMS}")
    if not os.path.isdir(path):
        raise DataError(f"data source {path} is a file; give its folder instead. Expected {_FORMS}")
    if os.path.isfile(os.path.join(path, "batches.meta")):
        from .batchfolder import BatchFolderSource
        src = BatchFolderSource(path, input_shape)
        _check_fits(src.root, src.image_shape, input_shape)
        _warn_fit(src, input_shape)
        return src
    if os.path.isdir(os.path.join(path, "train")):
        from .imagefolder import ImageFolderSource
        src = ImageFolderSource(path, input_shape)
        log.info("%s", src.describe())
        _warn_fit(src, input_shape)
        return src
    raise DataError(f"{path} has neither batches.meta (a cuda-convnet batch folder) nor a train/ "
                    f"subfolder (an image folder); expected {_FORMS}")
