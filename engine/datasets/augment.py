"""Input preparation: mean subtraction, crops, flips, PCA colour jitter and scaling.

`Preprocess` turns raw source batches (uint8 or float32 [N,C,Hs,Ws]) into the float32
[N,C,H,W] the net takes; `prepare_images` does the same for arbitrary user images at
prediction time. Numpy only (Pillow is imported by prepare_images only to resize).
"""
import numpy as np

from ._base import DataError

# PCA jitter follows the AlexNet paper (Krizhevsky et al. 2012, section 4.1): to each RGB
# pixel of an image add [p1 p2 p3] [a1*l1, a2*l2, a3*l3]^T, where p_i and l_i are the
# eigenvectors and eigenvalues of the 3x3 RGB covariance of the training pixels and a_i ~
# N(0, pca) is drawn once per image. The eigenvalues are not square-rooted (cuda-convnet2's
# --color-noise uses standard deviations instead, and rescales by 1/(1+s); we do not).
# Eigenvalues depend on the pixel unit and the paper's formula is not scale-invariant: the
# paper's magnitudes (and the common reimplementations, e.g. fb.resnet.torch) correspond to
# pixels in [0, 1]. So l_i are taken on that scale, l_i = lambda_i / 255^2 with lambda_i
# from DataSource.pca() in raw units, and the offset is converted back to raw units (x255):
#     offset_raw = sum_i a_i * (lambda_i / PCA_PIXEL_UNIT) * e_i
# With raw-unit eigenvalues directly, ImageNet's top eigenvalue (~1.4e4) would make the
# offset ~1000 raw units at pca=0.1, which would wash out every image.
PCA_PIXEL_UNIT = 255.0


def _shape3(input_shape):
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if min(c, h, w) < 1:
        raise ValueError(f"input_shape must be positive, got {input_shape!r}")
    return c, h, w


class Preprocess:
    """Mean subtraction, cropping, flipping, PCA colour jitter and scaling, per batch.

    `mean` is float32 [C,Hs,Ws] at the source image size (or [C], per channel), in raw
    pixel units. `pca_basis` is (eigenvalues [3], eigenvectors [3,3] as columns) from
    DataSource.pca(); it is required when pca > 0. For training: x = raw - mean, a random
    H x W crop if `crop` (else the centre crop), a horizontal flip with probability 0.5 if
    `flip`, the AlexNet PCA jitter if pca > 0 (see PCA_PIXEL_UNIT above), then x *= scale.
    """

    def __init__(self, input_shape, mean, scale=1.0, crop=False, flip=False, pca=0.0, pca_basis=None,
                 shift=0):
        self.input_shape = _shape3(input_shape)
        self.shift = int(shift)
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        c = self.input_shape[0]
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1 and mean.shape[0] == c:
            mean = mean.reshape(c, 1, 1)  # per channel: [C,1,1] broadcasts over any window
        elif mean.ndim != 3 or mean.shape[0] != c:
            raise ValueError(f"mean must be [C,H,W] or [C] with C={c}, got shape {mean.shape}")
        elif mean.shape[1:] != (1, 1) and (mean.shape[1] < self.input_shape[1]
                                           or mean.shape[2] < self.input_shape[2]):
            raise ValueError(f"mean image {mean.shape} is smaller than the input {self.input_shape}")
        self.mean = np.ascontiguousarray(mean)
        self.scale = float(scale)
        self.crop = bool(crop)
        self.flip = bool(flip)
        self.pca = float(pca)
        if self.pca < 0:
            raise ValueError(f"pca must be >= 0, got {pca}")
        self.pca_basis = None
        if pca_basis is not None:
            vals, vecs = pca_basis
            vals = np.asarray(vals, dtype=np.float64).reshape(-1)
            vecs = np.asarray(vecs, dtype=np.float64)
            if vals.shape != (3,) or vecs.shape != (3, 3):
                raise ValueError(f"pca_basis must be (eigenvalues [3], eigenvectors [3,3]), got "
                                 f"{vals.shape} and {vecs.shape}")
            self.pca_basis = (vals, vecs)
        if self.pca > 0:
            if c != 3:
                raise ValueError(f"PCA colour jitter needs 3-channel input, got {c} channel(s); set pca=0")
            if self.pca_basis is None:
                raise ValueError("pca > 0 needs pca_basis=(eigenvalues, eigenvectors) from DataSource.pca()")

    # -- helpers -------------------------------------------------------------------
    @property
    def source_hw(self):
        """(Hs, Ws) of the mean image, or None for a per-channel mean (any size then)."""
        return None if self.mean.shape[1:] == (1, 1) else self.mean.shape[1:]

    def _check(self, raw):
        raw = np.asarray(raw)
        c, h, w = self.input_shape
        if raw.ndim != 4 or raw.shape[1] != c:
            raise ValueError(f"expected a batch [N,{c},H,W], got shape {raw.shape}")
        hs, ws = raw.shape[2:]
        if hs < h or ws < w:
            raise ValueError(f"images {hs}x{ws} are smaller than the input {h}x{w}")
        src = self.source_hw
        if src is not None and (hs, ws) != tuple(src):
            raise ValueError(f"images are {hs}x{ws} but the mean image is {src[0]}x{src[1]}")
        return raw

    def _mean_window(self, y, x):
        if self.mean.shape[1:] == (1, 1):
            return self.mean
        h, w = self.input_shape[1:]
        return self.mean[:, y:y + h, x:x + w]

    def _crop(self, raw, ys, xs):
        """float32 [N,C,H,W]: raw[i] windows at (ys[i], xs[i]) minus the same mean window."""
        n = raw.shape[0]
        c, h, w = self.input_shape
        out = np.empty((n, c, h, w), np.float32)
        for i in range(n):
            y, x = int(ys[i]), int(xs[i])
            np.subtract(raw[i, :, y:y + h, x:x + w], self._mean_window(y, x), out=out[i], dtype=np.float32)
        return out

    def _centre(self, raw):
        hs, ws = raw.shape[2:]
        h, w = self.input_shape[1:]
        return (hs - h) // 2, (ws - w) // 2

    # -- public --------------------------------------------------------------------
    def train(self, raw, rng, rows=None):
        """float32 [N,C,H,W] contiguous, randomly augmented with numpy Generator `rng`.

        rows=(offset, total): raw holds rows offset..offset+N of a batch of `total` (a rank's
        share of it): the draws are made for the whole batch and this share's rows used, so
        its images and the generator's state are those of one process taking the batch."""
        raw = self._check(raw)
        n = raw.shape[0]
        offset, total = rows or (0, n)
        mine = slice(offset, offset + n)
        hs, ws = raw.shape[2:]
        h, w = self.input_shape[1:]
        if self.crop:
            ys = rng.integers(0, hs - h + 1, total)[mine]
            xs = rng.integers(0, ws - w + 1, total)[mine]
        else:
            y0, x0 = self._centre(raw)
            ys, xs = np.full(n, y0), np.full(n, x0)
        out = self._crop(raw, ys, xs)
        if self.shift:
            self._translate(out, rng, total, mine)
        if self.flip:
            m = (rng.random(total) < 0.5)[mine]
            out[m] = out[m][..., ::-1]
        if self.pca > 0:
            out += self.pca_offsets(rng, total)[mine][:, :, None, None]
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def _translate(self, out, rng, total=None, mine=slice(None)):
        """Shift each image by up to `shift` pixels each way, in place; the uncovered border
        becomes 0, i.e. the mean (for sources like digits, whose images fill the input).
        Draws for `total` images (default: out's), of which `mine` are out's."""
        n, _, h, w = out.shape
        d = rng.integers(-self.shift, self.shift + 1, size=(n if total is None else total, 2))[mine]
        for i in range(n):
            dy, dx = int(d[i, 0]), int(d[i, 1])
            if dy == 0 and dx == 0:
                continue
            src = out[i, :, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)].copy()
            out[i] = 0.0
            out[i, :, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] = src

    def pca_offsets(self, rng, n):
        """float32 [n,3]: per-image RGB offsets in raw units, sum_i a_i (l_i / 255) e_i with
        a_i ~ N(0, pca); their covariance is E diag((pca * l / 255)^2) E^T."""
        vals, vecs = self.pca_basis
        alpha = rng.normal(0.0, self.pca, size=(n, 3))
        return ((alpha * (vals / PCA_PIXEL_UNIT)) @ vecs.T).astype(np.float32)

    def test(self, raw):
        """float32 [N,C,H,W]: the centre crop, mean-subtracted and scaled; no randomness."""
        raw = self._check(raw)
        y0, x0 = self._centre(raw)
        n = raw.shape[0]
        out = self._crop(raw, np.full(n, y0), np.full(n, x0))
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def view_offsets(self, hs, ws):
        """The five (y, x) crop origins in cuda-convnet's order: top-left, top-right, centre,
        bottom-left, bottom-right (cc1 convdata.py `start_positions`)."""
        h, w = self.input_shape[1:]
        by, bx = hs - h, ws - w
        return [(0, 0), (0, bx), (by // 2, bx // 2), (by, 0), (by, bx)]

    def views(self, raw):
        """float32 [10,N,C,H,W]: the AlexNet / cuda-convnet ten test views. Views 0-4 are the
        crops at view_offsets() (top-left, top-right, centre, bottom-left, bottom-right, as in
        cc1's --multiview-test), views 5-9 their horizontal mirrors in the same order."""
        raw = self._check(raw)
        n = raw.shape[0]
        c, h, w = self.input_shape
        out = np.empty((10, n, c, h, w), np.float32)
        for v, (y, x) in enumerate(self.view_offsets(*raw.shape[2:])):
            out[v] = self._crop(raw, np.full(n, y), np.full(n, x))
            out[v + 5] = out[v][..., ::-1]
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def to_json(self):
        """The settings as a JSON-able dict (the mean array is saved separately)."""
        d = {"input_shape": list(self.input_shape), "scale": self.scale, "crop": self.crop,
             "flip": self.flip, "pca": self.pca, "shift": self.shift, "mean_shape": list(self.mean.shape), "pca_basis": None}
        if self.pca_basis is not None:
            d["pca_basis"] = {"eigenvalues": [float(v) for v in self.pca_basis[0]],
                              "eigenvectors": [[float(v) for v in row] for row in self.pca_basis[1]]}
        return d

    @classmethod
    def from_json(cls, d, mean):
        """Rebuild from to_json() output and the saved mean array."""
        try:
            basis = d.get("pca_basis")
            if basis is not None:
                basis = (basis["eigenvalues"], basis["eigenvectors"])
            pre = cls(d["input_shape"], mean, scale=d.get("scale", 1.0), crop=d.get("crop", False),
                      flip=d.get("flip", False), pca=d.get("pca", 0.0), pca_basis=basis,
                      shift=d.get("shift", 0))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad preprocessing settings {d!r}: {type(e).__name__}: {e}") from None
        ms = d.get("mean_shape")
        if ms is not None and list(pre.mean.shape) != list(ms):
            raise ValueError(f"the saved settings expect a mean of shape {tuple(ms)}, got {np.shape(mean)}")
        return pre


def multiview_problem(source, pre):
    """Why the ten test views (five crops and their mirror images, averaged) would mislead
    on this data, or None. They are refused when the net never saw a mirror image in
    training (`pre.flip` off) and either the data should not be mirrored (a source that is
    not `mirror_ok`: digits) or flips were turned off for it (train.augment.flip: false on
    a source that flips by default: its images are not mirror-symmetric either)."""
    if pre is None or pre.flip:
        return None
    lead = "multiview testing averages each image with its mirror image, but "
    advice = "; test without --multiview"
    if not getattr(source, "mirror_ok", True):
        why = getattr(source, "mirror_why", None) or f"{source.name} should not be mirrored"
        return (f"{lead}{why}, and the net never saw a mirror image in training (the {source.name} source "
                f"does not flip): the mirrored views would raise the error instead of lowering it{advice}")
    if source.default_augment.get("flip"):
        return (f"{lead}this net was trained with flips turned off (train.augment.flip: false), so it never "
                f"saw a mirror image of {source.name}: the mirrored views would raise the error{advice}, "
                "or train with flips")
    return None


def _resize(img, hw):
    """Bilinear resize of one [H,W,C] image to hw=(H', W') with Pillow (uint8 stays uint8)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"resizing images to {hw[0]}x{hw[1]} needs Pillow (pip install pillow); "
                          "or give images already at that size") from None
    th, tw = hw
    if img.dtype == np.uint8:
        mode_img = img[..., 0] if img.shape[2] == 1 else img
        if img.shape[2] not in (1, 3):
            return np.stack([_resize(img[..., k:k + 1], hw)[..., 0] for k in range(img.shape[2])], axis=-1)
        out = np.asarray(Image.fromarray(np.ascontiguousarray(mode_img)).resize((tw, th), Image.BILINEAR))
        return out.reshape(th, tw, -1)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., k], dtype=np.float32))
                        .resize((tw, th), Image.BILINEAR)) for k in range(img.shape[2])]
    return np.stack(chans, axis=-1)


def _as_image_array(images):
    try:
        a = np.asarray(images)
    except ValueError:  # a list of arrays of different sizes
        shapes = sorted({str(np.shape(x)) for x in images})
        raise DataError(f"images must be one array, or a list of arrays of one shape; got shapes "
                        f"{', '.join(shapes[:4])}: predict them one at a time, or resize them first") from None
    if a.dtype.kind not in "biuf":
        raise DataError(f"images must be uint8 or float pixel values, got dtype {a.dtype}; convert them, "
                        "e.g. np.asarray(PIL.Image.open(path).convert('RGB'))")
    return a


def prepare_images(images, input_shape, mean, scale=1.0):
    """Raw user images -> float32 [N,C,H,W] for prediction, prepared like test batches.

    `images`: uint8 or float arrays in raw pixel units (0..255 for image sources), shaped
    [N,H,W] (one channel), [N,H,W,C], or a single [H,W] / [H,W,C] image (a 3-D array is a
    single image when its last axis equals the net's channel count C and C is 1 or 3,
    otherwise a grey batch). Images whose size differs from the source image size (that of
    `mean`, [C,Hs,Ws]) are resized with Pillow so the shorter side matches and centre-cropped
    to Hs x Ws; same-size images stay pure numpy. Then the mean is subtracted, the centre
    H x W crop taken and the result multiplied by `scale`. With a per-channel mean [C] there
    is no source size: images are only centre-cropped. Images smaller than the net input
    are refused rather than blown up. Every problem with the images (shape, channels, size,
    dtype, NaN or infinite values, integers outside 0..255 for a net trained on 8-bit pixels)
    is a one-line DataError.
    """
    c, h, w = _shape3(input_shape)
    a = _as_image_array(images)
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        single = a.shape[-1] == c or (a.shape[-1] in (2, 3, 4) and c in (1, 3))  # [H,W,C] of some mode
        a = a[None] if (c in (1, 3) and single) else a[..., None]
    elif a.ndim != 4:
        raise DataError(f"images must be [N,H,W], [N,H,W,C], [H,W] or [H,W,C], got shape {a.shape}")
    if a.shape[-1] != c:
        hint = " (channels-first? transpose to channels-last)" if a.shape[1] == c else ""
        raise DataError(f"images have {a.shape[-1]} channel(s) (shape {np.shape(images)}) but the net takes "
                        f"{c}x{h}x{w}; convert them to {'RGB' if c == 3 else 'greyscale'}{hint}")
    if a.shape[0] == 0:
        raise DataError("no images given")
    ih, iw = a.shape[1:3]
    if ih < h or iw < w:
        raise DataError(f"images are {ih}x{iw}, smaller than the net input {h}x{w}; give images at least "
                        f"{h}x{w}")
    if a.dtype.kind == "f":
        finite = np.isfinite(a).reshape(len(a), -1).all(axis=1)
        if not finite.all():
            raise DataError(f"{np.count_nonzero(~finite)} of the {len(a)} images hold NaN or infinite values "
                            f"(the first: image {int(np.argmin(finite))}); give finite pixel values")
    elif a.dtype.kind in "iu" and a.dtype != np.uint8 and a.size:
        lo, hi = a.min(), a.max()
        m = np.asarray(mean)
        if (lo < 0 or hi > 255) and m.min() >= 0 and m.max() <= 255:  # trained on 8-bit pixels
            raise DataError(f"images are {a.dtype} with values {lo}..{hi}, but the net was trained on 8-bit "
                            "pixels (0..255); scale them (16-bit: divide by 257) or pass uint8")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
    pre = Preprocess((c, h, w), mean, scale=scale)
    src = pre.source_hw
    sh, sw = (h, w) if src is None else src
    if src is not None and (ih, iw) != (sh, sw):
        k = max(sh / ih, sw / iw)  # shorter side to the source side, then centre-crop
        rh, rw = max(sh, round(ih * k)), max(sw, round(iw * k))
        y0, x0 = (rh - sh) // 2, (rw - sw) // 2
        a = np.stack([_resize(img, (rh, rw))[y0:y0 + sh, x0:x0 + sw] for img in a])
    return pre.test(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
