"""ImageNet-layout folders: root/train/<class>/*.jpg|jpeg|png and root/val/<class>/...

Images are decoded with Pillow (imported only here, when such a folder is opened) in a
thread pool that works a few batches ahead of the consumer, converted to RGB (L for a
one-channel net; see images.py for grey, alpha, CMYK and 16-bit files), resized so the
shorter side is `side` (bilinear) and centre-cropped to side x side, where side =
max(256, net input H, W) as in AlexNet and cuda-convnet2's make-data.py.

Bad files are skipped and counted, never a crash: one that cannot be decoded (truncated,
corrupt, not an image) or that is smaller than the net input (blowing it up would give
mostly blur) is logged once (logger "engine.datasets"), counted in `skipped`, and left out
of its batch, which is then shorter; a batch whose images are all bad is left out of the
epoch. Which files fail depends only on the files, so every pass (and a resumed run)
skips the same ones. A bad dataset is an error (DataError): more than `max_bad_fraction`
(10%) of a split bad, or a class none of whose images can be used.
"""
import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._base import DataError, DataSource, log
from .images import EXTENSIONS, open_image

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
    max_bad_fraction = 0.1   # more bad images than this in a split is a dataset error

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
        self.min_hw = (int(h), int(w))
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
        empty = [n for n, k in zip(self.class_names, np.bincount(self._items["train"][1],
                                                                minlength=len(self.class_names))) if k == 0]
        if empty and len(empty) < len(self.class_names):
            raise DataError(f"{os.path.join(train_dir, empty[0])} has no .jpg/.jpeg/.png images"
                            f"{f' (nor do {len(empty) - 1} other class folders)' if len(empty) > 1 else ''}; "
                            "every train/ subfolder is a class: add its images or remove the folder")
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
        self._bad_in = {split: collections.Counter() for split in self._items}  # per class
        self._class_sizes = {split: np.bincount(y, minlength=self.num_classes)
                             for split, (_, y) in self._items.items()}
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

    # Pillow modes of colour files ("P": palette images, nearly always colour)
    COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")

    def peek(self, count=8):
        """[(width, height, colour)] of up to `count` training files (the first of each class,
        then more in file order), from their headers only: cheap on any folder. Unreadable
        files are left out (they are reported when decoded)."""
        from PIL import Image
        paths, labels = self._items["train"]
        _, firsts = np.unique(labels, return_index=True)
        picks = [int(i) for i in firsts[:count]]
        picks += [i for i in range(min(len(paths), 2 * count)) if i not in picks][:count - len(picks)]
        out = []
        for i in picks:
            try:
                with Image.open(paths[i]) as im:
                    out.append((im.size[0], im.size[1], im.mode in self.COLOUR_MODES))
            except Exception:       # noqa: BLE001 - a bad file is logged when it is decoded
                continue
        return out

    def _decode(self, path):
        """uint8 [C, side, side]; DataError if unreadable or smaller than the net input."""
        from PIL import Image
        im = open_image(path, self.mode, draft=(self.side, self.side))  # JPEG: decode at reduced size
        w, h = im.size  # draft only shrinks to >= side, so a small size here is the file's own
        if h < self.min_hw[0] or w < self.min_hw[1]:
            raise DataError(f"image {path} is {w}x{h}, smaller than the net input {self.min_hw[1]}x"
                            f"{self.min_hw[0]}; blown up it would be mostly blur: replace or remove it")
        k = self.side / min(w, h)
        nw, nh = max(self.side, round(w * k)), max(self.side, round(h * k))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.side) // 2, (nh - self.side) // 2
        a = np.asarray(im.crop((left, top, left + self.side, top + self.side)), dtype=np.uint8)
        return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))

    def _try_decode(self, path):
        try:
            return self._decode(path), None
        except DataError as e:
            return None, str(e)
        except Exception as e:  # e.g. MemoryError resizing a huge image: still one bad file
            return None, f"image {path}: {type(e).__name__}: {e}"

    def decode(self, path):
        """uint8 [C, side, side] for one file, or None (logged and counted) if it is bad."""
        a, why = self._try_decode(path)
        if a is None:
            self._note_bad(path, why)
        return a

    def _note_bad(self, path, why):
        with self._lock:
            new = path not in self._bad
            self._bad.add(path)
        if new:
            log.warning("skipping a bad image: %s", why)
        return new

    def _reject(self, split, i, why):
        """Count a bad image of `split`; DataError once the split itself looks broken."""
        paths, labels = self._items[split]
        if not self._note_bad(paths[i], why):
            return
        bad = self._bad_in[split]
        label = int(labels[i])
        bad[label] += 1
        folder = os.path.join(self.root, split)
        size = int(self._class_sizes[split][label])
        if bad[label] == size:
            raise DataError(f"{os.path.join(folder, self.class_names[label])}: none of its {size} image(s) "
                            f"can be used (the last: {why}); fix or replace them, or remove the class folder")
        total, n = sum(bad.values()), len(paths)
        if total > max(1, int(n * self.max_bad_fraction)):
            raise DataError(f"{folder}: {total} of its {n} images are unreadable or too small, more than "
                            f"{self.max_bad_fraction:.0%}, so the dataset looks damaged; fix or remove the bad "
                            f"files (each is logged; the last: {why})")

    def _generate(self, split, chunks, keep_empty=False):
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
                    pending.append((idx, [pool.submit(self._try_decode, paths[i]) for i in idx]))
                if not pending:
                    return
                idx, futures = pending.popleft()
                got = []
                for i, f in zip(idx, futures):
                    a, why = f.result()
                    if a is None:
                        self._reject(split, i, why)
                    else:
                        got.append((a, labels[i]))
                if not got and not keep_empty:  # every image bad: the batch is left out (the same one on every pass)
                    continue
                if not got:     # a rank's share: its place in the step is kept, empty
                    yield np.zeros((0,) + self.image_shape, np.uint8), np.zeros(0, np.int64)
                    continue
                yield np.stack([a for a, _ in got]), np.asarray([y for _, y in got], dtype=np.int64)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
