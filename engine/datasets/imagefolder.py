"""ImageNet-layout folders: root/train/<class>/*.jpg|jpeg|png and root/val/<class>/...

Images are decoded with Pillow (imported only here, when such a folder is opened) in a
thread pool that works a few batches ahead of the consumer, converted to RGB (L for a
one-channel net), resized so the shorter side is `side` (bilinear) and centre-cropped to
side x side, where side = max(256, net input H, W) as in AlexNet and cuda-convnet2's
make-data.py. Unreadable or corrupt files are skipped: the batch is simply shorter, the
file is logged once (logger "engine.datasets") and counted in `skipped`.
"""
import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._base import DataError, DataSource, log

EXTENSIONS = (".jpg", ".jpeg", ".png")
BASE_SIDE = 256


def _list_classes(folder):
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror or e}") from None


def _list_images(folder):
    try:
        return sorted(e.path for e in os.scandir(folder)
                      if e.is_file() and os.path.splitext(e.name)[1].lower() in EXTENSIONS)
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror or e}") from None


class ImageFolderSource(DataSource):
    """Class-per-folder images; classes are the sorted subfolder names of train/.

    val/ must use the same class names (a val class missing from train/ is an error); a
    missing val/ gives an empty validation split. Images are served as uint8 [3, side, side]
    (or [1, side, side] for a one-channel net). mean_image() estimates the mean from at most
    `mean_limit` (10,000) training images drawn at random, since a full decode pass over
    ImageNet would take hours. Preprocess default: random crop, flip, PCA jitter 0.1.
    """

    mean_limit = 10000
    _stat_batch = 64

    def __init__(self, root, input_shape, workers=None, prefetch=2):
        super().__init__()
        try:
            from PIL import Image  # noqa: F401  (fail early and clearly if Pillow is missing)
        except ImportError:
            raise DataError(f"{root} is an image folder, and decoding images needs Pillow, which is not "
                            "installed; run: pip install pillow") from None

        c, h, w = input_shape
        if c not in (1, 3):
            side = max(BASE_SIDE, int(h), int(w))
            raise DataError(f"{root} gives 3x{side}x{side} (RGB) or 1x{side}x{side} (grey) images but the net's "
                            f"input is {c}x{h}x{w}; image folders feed nets with 3 or 1 input channels")
        self.root = os.path.abspath(os.fspath(root))
        self.name = os.path.basename(self.root.rstrip(os.sep)) or self.root
        self.side = max(BASE_SIDE, int(h), int(w))
        self.mode = "RGB" if c == 3 else "L"
        self.image_shape = (int(c), self.side, self.side)
        self.is_color = c == 3
        self.default_augment = {"scale": 1.0, "crop": True, "flip": True, "pca": 0.1 if c == 3 else 0.0}
        self.workers = workers or min(4, max(2, os.cpu_count() or 2))
        self.prefetch = max(1, int(prefetch))

        train_dir = os.path.join(self.root, "train")
        self.class_names = _list_classes(train_dir)
        if not self.class_names:
            raise DataError(f"{train_dir} has no class subfolders; put each class's images in "
                            "train/<class_name>/")
        index = {name: i for i, name in enumerate(self.class_names)}
        self._items = {"train": self._scan(train_dir, self.class_names, index)}
        val_dir = os.path.join(self.root, "val")
        if os.path.isdir(val_dir):
            val_classes = _list_classes(val_dir)
            missing = [n for n in val_classes if n not in index]
            if missing:
                raise DataError(f"{val_dir} has class folder(s) {', '.join(missing[:5])} that {train_dir} "
                                "lacks; val/ must use the training class names")
            if not val_classes and _list_images(val_dir):
                raise DataError(f"{val_dir} holds images directly; sort them into val/<class_name>/ "
                                "folders named like the ones in train/")
            self._items["val"] = self._scan(val_dir, val_classes, index)
        else:
            log.warning("%s has no val/ folder; the validation split is empty", self.root)
            self._items["val"] = ([], np.zeros(0, np.int64))
        self.num_classes = len(self.class_names)
        self.num_train = len(self._items["train"][0])
        self.num_val = len(self._items["val"][0])
        if self.num_train == 0:
            raise DataError(f"{train_dir} has class folders but no .jpg/.jpeg/.png images in them")
        self._bad = set()
        self._lock = threading.Lock()

    @staticmethod
    def _scan(folder, names, index):
        paths, labels = [], []
        for name in names:
            files = _list_images(os.path.join(folder, name))
            paths += files
            labels += [index[name]] * len(files)
        return paths, np.asarray(labels, dtype=np.int64)

    @property
    def skipped(self):
        return len(self._bad)

    def decode(self, path):
        """uint8 [C, side, side] for one file, or None if it cannot be read."""
        from PIL import Image
        try:
            with Image.open(path) as im:
                im.draft(self.mode, (self.side, self.side))  # JPEG: decode at reduced size when possible
                im = im.convert(self.mode)
                w, h = im.size
                k = self.side / min(w, h)
                nw, nh = max(self.side, round(w * k)), max(self.side, round(h * k))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - self.side) // 2, (nh - self.side) // 2
                im = im.crop((left, top, left + self.side, top + self.side))
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # corrupt, truncated, not an image, unreadable: skip, never crash
            with self._lock:
                new = path not in self._bad
                self._bad.add(path)
            if new:
                log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return None
        return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))

    def _generate(self, split, chunks):
        paths, labels = self._items[split]
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine-datasets")
        pending = collections.deque()
        chunks = iter(chunks)
        try:
            while True:
                while len(pending) <= self.prefetch:
                    idx = next(chunks, None)
                    if idx is None:
                        break
                    idx = [i for i in idx if paths[i] not in self._bad]
                    pending.append((idx, [pool.submit(self.decode, paths[i]) for i in idx]))
                if not pending:
                    return
                idx, futures = pending.popleft()
                got = [(f.result(), labels[i]) for i, f in zip(idx, futures)]
                got = [(a, y) for a, y in got if a is not None]
                if not got:
                    continue
                yield np.stack([a for a, _ in got]), np.asarray([y for _, y in got], dtype=np.int64)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
