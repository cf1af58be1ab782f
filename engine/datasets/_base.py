"""The DataError exception and the DataSource base class shared by every source."""
import logging

import numpy as np

log = logging.getLogger("engine.datasets")

SPLITS = ("train", "val")


class DataError(ValueError):
    """A problem with training data: says what is wrong, in which file, and what to do."""


def part_slice(n, rank, size):
    """(start, stop) of rank's contiguous share of n items split over size ranks."""
    return n * rank // size, n * (rank + 1) // size


def shape_text(shape):
    return "x".join(str(int(s)) for s in shape)


class DataSource:
    """A labelled image collection split into "train" and "val".

    Attributes: name, num_classes, class_names (list of str or None), image_shape (C, H, W
    of the stored images; may be larger than the net input so random crops are possible),
    num_train, num_val, is_color, default_augment (keyword arguments for
    `augment.Preprocess`: scale, crop, flip, pca) and skipped (unreadable images so far).
    `mirror_ok` is False for data whose mirror images are not images of it (digits, text):
    it is not flipped in training by default, and the mirrored test views are refused
    (augment.multiview_problem says why, from `mirror_why`).
    """

    name = "?"
    num_classes = 0
    class_names = None
    image_shape = (0, 0, 0)
    num_train = 0
    num_val = 0
    is_color = False
    default_augment = {"scale": 1.0, "crop": False, "flip": False, "pca": 0.0}
    mirror_ok = True
    mirror_why = None
    # mean_image() uses at most this many training images (None: all of them).
    mean_limit = None
    pca_limit = 2000
    _stat_batch = 256

    def __init__(self):
        self._mean = None
        self._pca = None
        self._pca_done = False

    @property
    def skipped(self):
        return 0

    # -- iteration -----------------------------------------------------------------
    def batches(self, split, batch_size, rng=None, drop_last=False, part=None):
        """Iterate over `split` ("train" or "val") in batches of `batch_size`.

        Yields (images [N,C,H,W], labels int64 [N]). Images are uint8 in raw pixel units
        (float32 for the synthetic source). With a numpy Generator `rng` the order is a
        permutation drawn from it, otherwise file order. Memory stays bounded: batches are
        produced one (or a few, when prefetching) at a time.

        part=(rank, size): only rank's contiguous slice (part_slice) of every batch is read
        and yielded, possibly empty, so every rank takes as many steps as one process.
        """
        n = self._check_split(split, batch_size)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        chunks = self._chunks(order, batch_size, drop_last)
        if part is None:
            return self._generate(split, chunks)
        return self._generate(split, [c[slice(*part_slice(len(c), *part))] for c in chunks], keep_empty=True)

    def _check_split(self, split, batch_size):
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self.num_train if split == "train" else self.num_val

    @staticmethod
    def _chunks(order, batch_size, drop_last):
        n = len(order)
        stop = n - n % batch_size if drop_last else n
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)]

    def _generate(self, split, chunks, keep_empty=False):
        for idx in chunks:
            yield self._load(split, np.asarray(idx, dtype=np.int64))

    def _load(self, split, idx):  # pragma: no cover - every source overrides it
        raise NotImplementedError

    # -- statistics ----------------------------------------------------------------
    def _sample_batches(self, limit):
        """Training batches covering `limit` images (all of them when None), drawn in a
        fixed pseudo-random order so the statistics do not depend on file order."""
        if limit is None or limit >= self.num_train:
            yield from self.batches("train", self._stat_batch)
            return
        seen = 0
        gen = self.batches("train", self._stat_batch, rng=np.random.default_rng(12345))
        try:
            for images, labels in gen:
                images = images[:limit - seen]
                seen += len(images)
                yield images, labels[:len(images)]
                if seen >= limit:
                    break
        finally:
            gen.close()

    def mean_image(self):
        """float32 [C,H,W]: the mean training image in raw pixel units (cached)."""
        if self._mean is None:
            total = np.zeros(self.image_shape, np.float64)
            count = 0
            for images, _ in self._sample_batches(self.mean_limit):
                total += images.sum(axis=0, dtype=np.float64)
                count += len(images)
            if count == 0:
                raise DataError(f"{self.name}: no readable training images to compute the mean "
                                "image from; check the training data")
            self._mean = (total / count).astype(np.float32)
        return self._mean

    def pca(self):
        """(eigenvalues [3], eigenvectors [3,3] as columns), largest first, of the RGB
        covariance of training pixels in raw units, from up to `pca_limit` training images;
        None for grey sources. Cached."""
        if not self.is_color:
            return None
        if not self._pca_done:
            s = np.zeros(3, np.float64)
            ss = np.zeros((3, 3), np.float64)
            count = 0
            for images, _ in self._sample_batches(self.pca_limit):
                for start in range(0, len(images), 16):  # bounded float64 temporaries
                    px = images[start:start + 16].transpose(1, 0, 2, 3).reshape(3, -1)
                    px = px.astype(np.float64)
                    s += px.sum(axis=1)
                    ss += px @ px.T
                    count += px.shape[1]
            if count == 0:
                raise DataError(f"{self.name}: no readable training images for the colour PCA; "
                                "check the training data")
            mu = s / count
            cov = ss / count - np.outer(mu, mu)
            vals, vecs = np.linalg.eigh(cov)
            order = np.argsort(vals)[::-1]
            vals = np.clip(vals[order], 0.0, None)
            vecs = vecs[:, order]
            self._pca = (vals.astype(np.float32), vecs.astype(np.float32))
            self._pca_done = True
        return self._pca

    def describe(self):
        """One line for logs: name, shape, classes and split sizes."""
        return (f"{self.name}: {shape_text(self.image_shape)} {'colour' if self.is_color else 'grey'} "
                f"images, {self.num_classes} classes, {self.num_train} train / {self.num_val} val")

    def __repr__(self):
        return f"<{type(self).__name__} {self.describe()}>"
