"""Data sources (digits, synthetic, cuda-convnet batch folders, image folders) and input
preparation (Preprocess, prepare_images)."""
import json
import logging
import os
import pickle
import warnings

import numpy as np
import pytest

from engine.datasets import DataError, Preprocess, open_source, prepare_images
from engine.datasets.augment import PCA_PIXEL_UNIT
from engine.datasets.batchfolder import BatchFolderSource, load_pickle
from engine.datasets.memory import DIGITS_FILE


def collect(src, split, bs, rng=None, drop_last=False):
    xs, ys = [], []
    for x, y in src.batches(split, bs, rng=rng, drop_last=drop_last):
        xs.append(x)
        ys.append(y)
    return xs, ys


# --------------------------------------------------------------------------- digits
def test_digits_shapes_split_and_balance():
    src = open_source("digits", (1, 28, 28))
    assert (src.num_train, src.num_val, src.num_classes) == (3400, 600, 10)
    assert src.image_shape == (1, 28, 28) and not src.is_color and src.pca() is None
    assert src.class_names == [str(i) for i in range(10)]
    assert src.default_augment == {"scale": 1 / 255, "crop": False, "flip": False, "pca": 0.0}
    xs, ys = collect(src, "train", 1000)
    assert [len(y) for y in ys] == [1000, 1000, 1000, 400]
    assert all(x.shape[1:] == (1, 28, 28) and x.dtype == np.uint8 for x in xs)
    assert all(y.dtype == np.int64 for y in ys)
    vx, vy = collect(src, "val", 256, drop_last=True)
    assert [len(y) for y in vy] == [256, 256]
    vx, vy = collect(src, "val", 600)
    labels = np.concatenate(ys + vy)
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 400))
    # file order is the npz order, first 3,400 then last 600
    with np.load(DIGITS_FILE) as z:
        assert np.array_equal(np.concatenate(xs)[:, 0], z["images"][:3400])
        assert np.array_equal(vx[0][:, 0], z["images"][3400:])
    # a shuffled epoch is a permutation: same multiset of (image, label) pairs
    sx, sy = collect(src, "train", 500, rng=np.random.default_rng(3))
    sx, sy = np.concatenate(sx), np.concatenate(sy)
    assert not np.array_equal(sy, np.concatenate(ys))
    key = lambda x, y: sorted(zip(x.reshape(len(x), -1).sum(1).tolist(), y.tolist()))  # noqa: E731
    assert key(sx, sy) == key(np.concatenate(xs), np.concatenate(ys))
    mean = src.mean_image()
    assert mean.dtype == np.float32 and mean.shape == (1, 28, 28)
    np.testing.assert_allclose(mean, np.concatenate(xs).mean(0), rtol=1e-5)


# --------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_and_determinism():
    a = open_source("synthetic:12", (3, 224, 224), seed=5)
    b = open_source("synthetic:12", (3, 224, 224), seed=5)
    c = open_source("synthetic:12", (3, 224, 224), seed=6)
    assert (a.num_train, a.num_val, a.num_classes, a.image_shape) == (12, 2, 1000, (3, 224, 224))
    xa, ya = collect(a, "train", 5, rng=np.random.default_rng(0))
    xb, yb = collect(b, "train", 5, rng=np.random.default_rng(0))
    assert [x.shape for x in xa] == [(5, 3, 224, 224), (5, 3, 224, 224), (2, 3, 224, 224)]
    assert xa[0].dtype == np.float32 and ya[0].dtype == np.int64
    assert all(np.array_equal(p, q) for p, q in zip(xa + ya, xb + yb))
    xc, _ = collect(c, "train", 5, rng=np.random.default_rng(0))
    assert not np.array_equal(xa[0], xc[0])
    # the same image whatever the batching
    x1, _ = collect(a, "train", 12)
    x2, _ = collect(a, "train", 1)
    assert np.array_equal(x1[0], np.concatenate(x2))
    small = open_source("synthetic", (1, 28, 28))
    assert (small.num_train, small.num_val, small.num_classes, small.default_augment["scale"]) == (1280, 256, 10, 1.0)
    assert open_source("synthetic", (1, 28, 28), num_classes=7).num_classes == 7
    _, ys = collect(small, "val", 256)
    assert ys[0].min() >= 0 and ys[0].max() < 10


# --------------------------------------------------------------------------- batch folders
S = 8  # image side of the test batches (3x8x8 = 192 values)


def make_images(labels, start):
    """Images whose pixels encode label, channel and index: plane c = 10*label + c, a 255
    marker at row 0 col 1 (catches a transposed image) and the index at row 7 col 7."""
    n = len(labels)
    x = np.empty((n, 3, S, S), np.uint8)
    x[:] = (10 * np.asarray(labels)[:, None, None, None] + np.arange(3)[None, :, None, None])
    x[:, :, 0, 1] = 255
    x[:, :, S - 1, S - 1] = ((start + np.arange(n)) % 251)[:, None]
    return x


def check_images(x, y):
    assert x.shape[1:] == (3, S, S) and x.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(x[:, c, 2, 3], 10 * y + c)
    assert np.all(x[:, :, 0, 1] == 255) and np.all(x[:, :, 1, 0] != 255)


def write_batch_folder(root, layout, bytes_keys=False, sub_batches=False):
    """cuda-convnet layout: data_batch_1..3 ([dims, n]), batch 3 = validation;
    python layout: data_batch_1..2 + test_batch ([n, dims]), test_batch = validation."""
    root.mkdir()
    rng = np.random.default_rng(0)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)  # noqa: E731
    names = (["data_batch_1", "data_batch_2.1", "data_batch_2.2", "data_batch_3"] if sub_batches
             else ["data_batch_1", "data_batch_2", "data_batch_3"])
    if layout == "python":
        names = ["data_batch_1", "data_batch_2", "test_batch"]
    sizes = [23, 11, 14, 17][:len(names)]
    start, files = 0, {}
    for name, n in zip(names, sizes):
        labels = rng.integers(0, 10, n)
        x = make_images(labels, start).reshape(n, -1)
        data = x.T.copy() if layout == "colmajor" else x
        with open(root / name, "wb") as f:
            pickle.dump({k("data"): data, k("labels"): labels.tolist(), k("batch_label"): k(name)}, f)
        files[name] = (labels, start)
        start += n
    meta = {k("label_names"): [k(f"class{i}") for i in range(10)], k("num_vis"): 3 * S * S}
    train = np.concatenate([make_images(*files[nm]) for nm in names[:-1]])
    if layout == "colmajor":
        meta["data_mean"] = train.reshape(len(train), -1).mean(0).reshape(-1, 1)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    val_labels = files[names[-1]][0]
    return len(train), val_labels


@pytest.mark.parametrize("layout,bytes_keys,sub_batches", [
    ("colmajor", False, False), ("colmajor", False, True), ("python", True, False), ("python", False, False)])
def test_batch_folder_layouts(tmp_path, layout, bytes_keys, sub_batches):
    root = tmp_path / "cifar"
    n_train, val_labels = write_batch_folder(root, layout, bytes_keys, sub_batches)
    src = open_source(str(root), (3, 6, 6))
    assert (src.num_train, src.num_val, src.num_classes) == (n_train, len(val_labels), 10)
    assert src.image_shape == (3, S, S) and src.is_color
    assert src.class_names == [f"class{i}" for i in range(10)]
    assert src.default_augment == {"scale": 1.0, "crop": False, "flip": False, "pca": 0.0}
    xs, ys = collect(src, "train", 16, rng=np.random.default_rng(1))
    x, y = np.concatenate(xs), np.concatenate(ys)
    check_images(x, y)
    idx = x[:, 0, S - 1, S - 1].astype(int)
    assert sorted(idx.tolist()) == list(range(n_train))  # every training image exactly once
    assert not np.array_equal(idx, np.arange(n_train))  # shuffled
    vx, vy = collect(src, "val", 100)
    assert np.array_equal(vy[0], val_labels)  # validation = highest batch / test_batch, file order
    check_images(vx[0], vy[0])
    mean = src.mean_image()
    assert mean.shape == (3, S, S) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), atol=1e-3)
    # streaming mode (data larger than the memory limit) yields the same images
    stream = BatchFolderSource(root, memory_limit=0)
    sx, sy = collect(stream, "train", 16, rng=np.random.default_rng(2))
    assert [len(v) for v in sy[:-1]] == [16] * (len(sy) - 1)
    sx, sy = np.concatenate(sx), np.concatenate(sy)
    check_images(sx, sy)
    assert sorted(sx[:, 0, S - 1, S - 1].tolist()) == list(range(n_train))


def test_batch_folder_shape_errors(tmp_path):
    root = tmp_path / "cifar"
    write_batch_folder(root, "colmajor")
    with pytest.raises(DataError, match=r"3x8x8.*1x8x8"):
        open_source(root, (1, 8, 8))
    with pytest.raises(DataError, match=r"3x8x8.*3x16x16"):
        open_source(root, (3, 16, 16))
    os.remove(root / "data_batch_1")
    os.remove(root / "data_batch_2")
    with pytest.raises(DataError, match="at least two"):
        open_source(root, (3, 8, 8))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("victim", ["batches.meta", "data_batch_2"])
def test_restricted_unpickler_refuses_code(tmp_path, victim):
    root = tmp_path / "evil"
    write_batch_folder(root, "colmajor")
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps({"data": _RunsCode(marker), "labels": [1]})
    assert b"system" in payload
    (root / victim).write_bytes(payload)
    with pytest.raises(DataError) as err:
        open_source(str(root), (3, 8, 8))
    msg = str(err.value)
    assert "refusing to load" in msg and victim in msg and "system" in msg and "could run code" in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_numpy_at_every_protocol(tmp_path, protocol):
    obj = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.float32(2.5), "c": [1, "x", b"y"],
           "d": np.zeros((2, 2), np.float32).T, "e": np.int64(7)}
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = load_pickle(str(p))
    assert np.array_equal(got["a"], obj["a"]) and got["b"] == 2.5 and got["e"] == 7
    assert got["c"] == [1, "x", b"y"] and got["d"].shape == (2, 2)
    if protocol == 2:  # Python-2 era files (CIFAR-10 python) name numpy.core.multiarray
        old = pickle.dumps({"a": obj["a"]}, protocol=2).replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in old
        p.write_bytes(old)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and without warnings
            assert np.array_equal(load_pickle(str(p))["a"], obj["a"])
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="x.pkl"):
        load_pickle(str(p))


# --------------------------------------------------------------------------- image folders
COLOURS = {"cat": (220, 20, 20), "dog": (20, 220, 20), "eel": (20, 20, 220)}


def write_image_folder(root, with_corrupt=True):
    from PIL import Image
    sizes = [(40, 30), (20, 50), (64, 64)]
    for split, count in (("train", 3), ("val", 1)):
        for name, colour in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i]
                Image.new("RGB", (w, h), colour).save(d / f"img{i}.{'png' if i == 1 else 'jpg'}")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    if with_corrupt:
        (root / "train" / "dog" / "broken.jpg").write_bytes(os.urandom(300))


def test_image_folder(tmp_path, caplog):
    pytest.importorskip("PIL")
    root = tmp_path / "imgs"
    write_image_folder(root)
    caplog.set_level(logging.WARNING, logger="engine.datasets")
    src = open_source(str(root), (3, 16, 16))  # the images (20 to 64 px) must not be smaller than the input
    assert src.class_names == ["cat", "dog", "eel"] and src.num_classes == 3
    assert (src.num_train, src.num_val, src.image_shape) == (10, 3, (3, 256, 256))
    assert src.default_augment == {"scale": 1.0, "crop": True, "flip": True, "pca": 0.1}
    for epoch in range(2):
        xs, ys = collect(src, "train", 4, rng=np.random.default_rng(epoch))
        x, y = np.concatenate(xs), np.concatenate(ys)
        assert x.shape == (9, 3, 256, 256) and x.dtype == np.uint8 and y.dtype == np.int64
        dominant = x.reshape(9, 3, -1).mean(2).argmax(1)  # red/green/blue = cat/dog/eel
        assert np.array_equal(dominant, y)
        assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert src.skipped == 1
    logged = [r for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(logged) == 1 and str(root / "train" / "dog" / "broken.jpg") in logged[0].getMessage()
    vx, vy = collect(src, "val", 8)
    assert vx[0].shape == (3, 3, 256, 256) and vy[0].tolist() == [0, 1, 2]
    assert src.mean_image().shape == (3, 256, 256)
    vals, vecs = src.pca()
    assert vals.shape == (3,) and vecs.shape == (3, 3) and vals[0] >= vals[1] >= vals[2] >= 0
    # a one-channel net gets grey images; a larger net gets larger stored images
    assert open_source(str(root), (1, 224, 224)).image_shape == (1, 256, 256)
    assert open_source(str(root), (3, 300, 300)).image_shape == (3, 300, 300)
    with pytest.raises(DataError, match="4x224x224"):
        open_source(str(root), (4, 224, 224))


def test_image_folder_val_class_must_exist_in_train(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "imgs"
    write_image_folder(root, with_corrupt=False)
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        open_source(str(root), (3, 224, 224))


# --------------------------------------------------------------------------- augmentation
def windows(img, h, w):
    """All (y, x, window) of img [C,Hs,Ws]."""
    return [(y, x, img[:, y:y + h, x:x + w]) for y in range(img.shape[1] - h + 1)
            for x in range(img.shape[2] - w + 1)]


def test_train_crops_are_windows_of_their_own_image():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (64, 3, 9, 7), dtype=np.uint8)
    mean = rng.normal(100, 10, (3, 9, 7)).astype(np.float32)
    pre = Preprocess((3, 5, 4), mean, scale=0.5, crop=True, flip=True)
    out = pre.train(raw, np.random.default_rng(1))
    assert out.shape == (64, 3, 5, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    centred = raw.astype(np.float32) - mean
    seen, flips = set(), 0
    for i in range(64):  # image i's output is a window of image i: the pairing with labels holds
        hits = [(y, x, f) for y, x, win in windows(centred[i], 5, 4)
                for f, cand in ((0, win), (1, win[..., ::-1])) if np.allclose(out[i], 0.5 * cand, atol=1e-4)]
        assert len(hits) >= 1
        seen.add(hits[0][:2])
        flips += hits[0][2]
    assert seen == {(y, x) for y in range(5) for x in range(4)}  # every valid offset, incl. the far ones
    assert 16 <= flips <= 48
    # no crop, no flip, same size: exactly (raw - mean) * scale
    same = Preprocess((3, 9, 7), mean, scale=2.0, crop=True, flip=False)
    np.testing.assert_allclose(same.train(raw, rng), 2 * centred, rtol=1e-6)


def test_flip_twice_is_identity_and_labels_untouched():
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (400, 1, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, 400)
    lab0 = labels.copy()
    pre = Preprocess((1, 6, 6), np.zeros(1, np.float32), flip=True)
    out = pre.train(raw, np.random.default_rng(3))
    flipped = np.array([not np.array_equal(out[i], raw[i]) for i in range(400)])
    np.testing.assert_array_equal(out[flipped][..., ::-1], raw[flipped])  # flip of the flip = original
    assert abs(flipped.mean() - 0.5) < 4 * 0.5 / np.sqrt(400)  # p = 0.5 within 4 standard errors
    assert np.array_equal(labels, lab0)


def test_centre_crop_and_ten_views():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (3, 3, 10, 12), dtype=np.uint8)
    mean = rng.normal(128, 5, (3, 10, 12)).astype(np.float32)
    pre = Preprocess((3, 6, 7), mean, scale=0.25, crop=True, flip=True)
    centred = (raw.astype(np.float32) - mean) * 0.25
    t1, t2 = pre.test(raw), pre.test(raw)
    assert np.array_equal(t1, t2)
    np.testing.assert_allclose(t1, centred[:, :, 2:8, 2:9], rtol=1e-6)
    v = pre.views(raw)
    assert v.shape == (10, 3, 3, 6, 7)
    origins = [(0, 0), (0, 5), (2, 2), (4, 0), (4, 5)]  # TL, TR, centre, BL, BR (cc1 order)
    for k, (y, x) in enumerate(origins):
        np.testing.assert_allclose(v[k], centred[:, :, y:y + 6, x:x + 7], rtol=1e-6)
        np.testing.assert_allclose(v[k + 5], centred[:, :, y:y + 6, x:x + 7][..., ::-1], rtol=1e-6)
    np.testing.assert_array_equal(v[2], t1)


def test_pca_jitter_statistics():
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    vals = np.array([6000.0, 900.0, 150.0])
    s = 0.1
    pre = Preprocess((3, 2, 2), np.zeros((3, 2, 2), np.float32), pca=s, pca_basis=(vals, q))
    n = 20000
    out = pre.train(np.zeros((n, 3, 2, 2), np.uint8), np.random.default_rng(6))
    off = out[:, :, 0, 0].astype(np.float64)
    assert np.array_equal(out, np.broadcast_to(off[:, :, None, None], out.shape))  # same shift, every pixel
    sd = s * vals / PCA_PIXEL_UNIT  # std-dev of the offset along each eigenvector
    cov = q @ np.diag(sd ** 2) @ q.T
    # mean ~ 0: each component within 5 standard errors sqrt(var/n)
    assert np.all(np.abs(off.mean(0)) < 5 * np.sqrt(np.diag(cov) / n))
    # along the eigenvectors the offsets are independent with variance sd^2:
    # relative error of a sample variance ~ sqrt(2/n) = 1%; correlations ~ 1/sqrt(n) = 0.7%
    z = off @ q
    zc = np.cov(z.T)
    np.testing.assert_allclose(np.diag(zc), sd ** 2, rtol=5 * np.sqrt(2 / n))
    corr = zc / np.sqrt(np.outer(np.diag(zc), np.diag(zc)))
    assert np.all(np.abs(corr[~np.eye(3, dtype=bool)]) < 5 / np.sqrt(n))
    np.testing.assert_allclose(np.cov(off.T), cov, atol=5 * np.sqrt(2 / n) * sd[0] ** 2)
    with pytest.raises(ValueError, match="pca_basis"):
        Preprocess((3, 2, 2), np.zeros(3), pca=0.1)


def test_preprocess_json_round_trip():
    q = np.eye(3)
    pre = Preprocess((3, 4, 4), np.ones((3, 6, 6)), scale=1 / 255, crop=True, flip=True, pca=0.1,
                     pca_basis=([3.0, 2.0, 1.0], q))
    d = json.loads(json.dumps(pre.to_json()))
    back = Preprocess.from_json(d, np.ones((3, 6, 6), np.float32))
    assert back.to_json() == pre.to_json()
    raw = np.random.default_rng(0).integers(0, 256, (5, 3, 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(back.train(raw, np.random.default_rng(1)), pre.train(raw, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="mean"):
        Preprocess.from_json(d, np.ones((3, 8, 8), np.float32))


# --------------------------------------------------------------------------- prepare_images
def test_prepare_images():
    rng = np.random.default_rng(7)
    mean = rng.normal(30, 3, (1, 28, 28)).astype(np.float32)
    imgs = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    out = prepare_images(imgs, (1, 24, 24), mean, 1 / 255)
    assert out.shape == (4, 1, 24, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], (imgs[:, 2:26, 2:26] - mean[0, 2:26, 2:26]) / 255, rtol=1e-5)
    assert prepare_images(imgs[0], (1, 24, 24), mean, 1 / 255).shape == (1, 1, 24, 24)  # [H,W]
    assert prepare_images(imgs.astype(np.float64), (1, 24, 24), mean).dtype == np.float32
    # a single colour image [H,W,C] at the source size, and one of another size (resized)
    cmean = np.full((3, 32, 32), 100, np.float32)
    hwc = np.zeros((32, 32, 3), np.uint8)
    hwc[..., 0], hwc[..., 1], hwc[..., 2] = 110, 120, 130
    one = prepare_images(hwc, (3, 24, 24), cmean)
    assert one.shape == (1, 3, 24, 24)
    np.testing.assert_allclose(one[0, :, 0, 0], [10, 20, 30])
    with pytest.raises(ValueError, match="channel"):
        prepare_images(np.zeros((32, 32, 4), np.uint8), (3, 24, 24), cmean)
    with pytest.raises(ValueError, match="channel"):
        prepare_images(np.zeros((2, 28, 28), np.uint8), (3, 24, 24), cmean)
    with pytest.raises(ValueError, match="smaller"):
        prepare_images(np.zeros((2, 20, 20), np.uint8), (1, 24, 24), mean)
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        prepare_images(np.zeros((1, 2, 28, 28, 1), np.uint8), (1, 24, 24), mean)


def test_prepare_images_resizes_other_sizes():
    pytest.importorskip("PIL")
    cmean = np.full((3, 32, 32), 100, np.float32)
    big = np.empty((48, 64, 3), np.uint8)
    big[..., 0], big[..., 1], big[..., 2] = 110, 120, 130
    out = prepare_images(big, (3, 24, 24), cmean)
    assert out.shape == (1, 3, 24, 24)
    np.testing.assert_allclose(out[0], np.broadcast_to(np.array([10, 20, 30.0])[:, None, None], (3, 24, 24)))
    # a float grey batch 40x30: shorter side 30 -> 28, then centre 28x28, then centre 24x24
    ramp = np.tile(np.arange(30, dtype=np.float64) * 8, (2, 40, 1))  # varies along the width only
    mean = np.zeros((1, 28, 28), np.float32)
    got = prepare_images(ramp, (1, 24, 24), mean)
    assert got.shape == (2, 1, 24, 24) and got.dtype == np.float32
    assert np.all(np.diff(got[0, 0], axis=1) > 0) and np.allclose(np.diff(got[0, 0], axis=0), 0, atol=1e-3)
    assert 8 * 30 / 28 * 0.9 < np.diff(got[0, 0, 5]).mean() < 8 * 30 / 28 * 1.1  # width 30 -> 28


# --------------------------------------------------------------------------- open_source errors
def test_open_source_errors(tmp_path):
    with pytest.raises(DataError, match=r"digits.*synthetic.*batches\.meta.*train/"):
        open_source("imagenet-please", (3, 224, 224))
    with pytest.raises(DataError, match="synthetic:N"):
        open_source("synthetic:lots", (3, 32, 32))
    with pytest.raises(DataError, match="neither batches.meta"):
        open_source(tmp_path, (3, 32, 32))
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        open_source(str(f), (3, 32, 32))
    with pytest.raises(DataError, match=r"1x28x28.*3x28x28"):
        open_source("digits", (3, 28, 28))
    with pytest.raises(DataError, match=r"1x28x28.*1x32x32"):
        open_source("digits", (1, 32, 32))
    with pytest.raises(DataError, match="input_shape"):
        open_source("digits", (28, 28))


def test_shift_translates_and_keeps_shape():
    from engine.datasets.augment import Preprocess
    raw = np.zeros((200, 1, 9, 9), np.uint8)
    raw[:, 0, 4, 4] = 100                       # one bright pixel in the middle
    pre = Preprocess((1, 9, 9), np.zeros((1, 9, 9), np.float32), shift=2)
    out = pre.train(raw, np.random.default_rng(0))
    assert out.shape == (200, 1, 9, 9)
    pos = np.array([np.unravel_index(np.argmax(o[0]), (9, 9)) for o in out])
    assert np.all(np.abs(pos - 4) <= 2) and len({tuple(p) for p in pos}) == 25   # every offset occurs
    assert np.all(out.reshape(200, -1).sum(1) == 100)                           # nothing else changed
    np.testing.assert_array_equal(pre.test(raw), raw.astype(np.float32))          # no shift at test
