"""In-memory sources: the embedded MNIST digits and synthetic random data."""
import os

import numpy as np

from ._base import DataError, DataSource

DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")


class DigitsSource(DataSource):
    """4,000 real MNIST digits shipped with the engine (engine/datasets/digits.npz).

    Images are [N,1,28,28] uint8, 400 per class, stored shuffled. The split is fixed: the
    first 3,400 images are the training set and the last 600 the validation set (every
    class has between 51 and 78 validation images). class_names are "0".."9". Preprocess
    default: scale 1/255, no crop, no flip, no PCA jitter. Not `mirror_ok`: a mirrored digit
    is no digit, so the mirrored test views (--multiview) are refused.
    """

    NUM_TRAIN = 3400
    mirror_ok = False
    mirror_why = "digits are not mirror-symmetric (a mirrored 2, 3 or 7 is no digit)"

    def __init__(self, path=DIGITS_FILE):
        super().__init__()
        try:
            with np.load(path) as z:
                images, labels = z["images"], z["labels"]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read the embedded digits file {path}: {e}; "
                            "reinstall the engine package") from None
        self._images = np.ascontiguousarray(images[:, None, :, :], dtype=np.uint8)
        self._labels = labels.astype(np.int64)
        self.name = "digits"
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]
        self.image_shape = tuple(self._images.shape[1:])
        self.num_train = self.NUM_TRAIN
        self.num_val = len(self._labels) - self.NUM_TRAIN
        self.is_color = False
        self.default_augment = {"scale": 1.0 / 255.0, "crop": False, "flip": False, "pca": 0.0}

    def _load(self, split, idx):
        base = 0 if split == "train" else self.NUM_TRAIN
        idx = np.asarray(idx) + base
        return self._images[idx], self._labels[idx]


class SyntheticSource(DataSource):
    """Random float32 images of exactly the net's input shape with random labels.

    For smoke tests and benchmarks: nothing is learnable beyond memorisation. Values are
    standard normal. Everything is a deterministic function of `seed`; each image is
    generated on demand from (seed, split, index), so memory stays bounded even at
    3x224x224. Default 1280 training and 256 validation images.
    """

    def __init__(self, input_shape, seed=0, num_train=1280, num_val=256, num_classes=None):
        super().__init__()
        c, h, w = input_shape
        if num_classes is None:
            num_classes = 1000 if (c == 3 and h >= 200 and w >= 200) else 10
        if int(num_classes) < 1:
            raise DataError(f"synthetic: num_classes must be >= 1, got {num_classes}")
        self.seed = int(seed)
        self.name = "synthetic"
        self.num_classes = int(num_classes)
        self.class_names = None
        self.image_shape = (int(c), int(h), int(w))
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.is_color = c == 3
        self.default_augment = {"scale": 1.0, "crop": False, "flip": False, "pca": 0.0}
        self._labels = {
            split: np.random.default_rng([self.seed, k, 0]).integers(0, self.num_classes, n).astype(np.int64)
            for k, (split, n) in enumerate((("train", self.num_train), ("val", self.num_val)))
        }

    def _load(self, split, idx):
        k = 0 if split == "train" else 1
        out = np.empty((len(idx),) + self.image_shape, np.float32)
        for j, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, k, 1, int(i)])
            out[j] = rng.standard_normal(self.image_shape, dtype=np.float32)
        return out, self._labels[split][np.asarray(idx, dtype=np.int64)]
