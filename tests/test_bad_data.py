"""Bad data, injected for real: damaged and odd image files, tiny images, broken batch
files and hostile pickles, in the training sources and on the single-image path (Net.predict
and `python -m engine predict`). Each gets a one-line DataError naming the file, or is
skipped and counted when it is a single image among good ones."""
import codecs
import collections
import io
import logging
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from engine.datasets import DataError, Preprocess, open_source, prepare_images
from engine.datasets.batchfolder import load_pickle
from engine.datasets.images import read_image

Image = pytest.importorskip("PIL.Image")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET224 = (3, 224, 224)
GOOD = (232, 226)  # w, h: just above a 224 net's input, small enough to be quick


def encoded(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(colour, size=GOOD):
    return Image.new("RGB", size, colour)


def truncated(fmt):
    """A real JPEG/PNG of a noisy image cut off half-way (headers intact)."""
    noise = np.random.default_rng(0).integers(0, 256, (GOOD[1], GOOD[0], 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), fmt)
    return data[:len(data) // 2]


def palette_with_alpha(colour):
    """A palette PNG whose tRNS chunk holds per-entry alpha bytes (Pillow warns converting it to RGB)."""
    im = rgb(colour).convert("P", palette=Image.ADAPTIVE, colors=4)
    return encoded(im, "PNG", transparency=bytes([128, 255, 255, 255]))


def grey16(level):
    return encoded(Image.fromarray(np.full((GOOD[1], GOOD[0]), level, np.uint16)), "PNG")


def write_folder(root, classes, extra=()):
    """root/train/<class>/<i>.png, `classes` = {name: (count, colour)}; `extra` = (relpath, bytes)."""
    for name, (count, colour) in classes.items():
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(count):
            (d / f"good{i}.png").write_bytes(encoded(rgb(colour), "PNG"))
    for rel, data in extra:
        (root / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / rel).write_bytes(data)
    return str(root)


def epoch(src, batch=8, rng=None):
    got = list(src.batches("train", batch, rng=rng))
    return np.concatenate([x for x, _ in got]), np.concatenate([y for _, y in got]), [len(y) for _, y in got]


# --------------------------------------------------------------------------- image files
def test_odd_image_modes_are_converted_like_rgb(tmp_path):
    """CMYK JPEG, RGBA / LA / transparent-palette / 16-bit grey PNGs all become the expected pixels."""
    red = (200, 60, 20)
    files = {
        "cmyk.jpg": (encoded(rgb(red).convert("CMYK"), "JPEG", quality=95), red, 6),
        "rgba.png": (encoded(Image.new("RGBA", GOOD, red + (40,)), "PNG"), red, 0),
        "palette.png": (palette_with_alpha(red), red, 3),
        "grey.jpg": (encoded(Image.new("L", GOOD, 90), "JPEG", quality=95), (90, 90, 90), 2),
        "greyalpha.png": (encoded(Image.new("LA", GOOD, (90, 10)), "PNG"), (90, 90, 90), 0),
        # 16-bit grey: Pillow's own convert clips 40000 to 255; scaled, it is 40000/257 = 156
        "grey16.png": (grey16(40000), (156, 156, 156), 0),
    }
    for name, (data, want, tol) in files.items():
        (tmp_path / name).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no Pillow warning (the palette's alpha bytes would give one)
            a = read_image(str(tmp_path / name), 3)
            g = read_image(str(tmp_path / name), 1)
        assert a.shape == (GOOD[1], GOOD[0], 3) and a.dtype == np.uint8, name
        assert np.abs(a.reshape(-1, 3).mean(0) - want).max() <= tol + 0.5, (name, a.reshape(-1, 3).mean(0))
        luma = 0.299 * want[0] + 0.587 * want[1] + 0.114 * want[2]
        assert g.shape == (GOOD[1], GOOD[0]) and abs(g.mean() - luma) <= tol + 1, (name, g.mean())
    # the image folder converts them the same way, for RGB and for grey nets
    root = tmp_path / "set"
    (root / "train" / "odd").mkdir(parents=True)
    for name, (data, _, _) in files.items():
        (root / "train" / "odd" / name).write_bytes(data)
    for shape in (NET224, (1, 224, 224)):
        src = open_source(str(root), shape)
        x, _, _ = epoch(src)
        assert x.shape == (len(files), shape[0], 256, 256) and src.skipped == 0
        assert abs(x[sorted(files).index("grey16.png")].mean() - 156) < 1


@pytest.mark.parametrize("make,why", [
    (lambda p: p.write_bytes(truncated("JPEG")), "truncated"),
    (lambda p: p.write_bytes(truncated("PNG")), "truncated"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 a JPEG header, then junk"), "Truncated File Read"),
    (lambda p: p.write_bytes(b"GIF? no, junk"), "not a JPEG or PNG"),
    (lambda p: p.write_bytes(b""), "not a JPEG or PNG"),
    (lambda p: None, "No such file"),
    (lambda p: p.mkdir(), "Is a directory"),
])
def test_unreadable_file_is_one_line_error_naming_it(tmp_path, make, why):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(DataError) as err:
        read_image(str(path), 3)
    msg = str(err.value)
    todo = "check the path" if why in ("No such file", "Is a directory") else "replace or remove the file"
    assert str(path) in msg and why in msg and "\n" not in msg and todo in msg


# --------------------------------------------------------------------------- image folders
def test_bad_images_are_skipped_counted_and_logged_once(tmp_path, caplog):
    colours = {"a": (10, 10, 10), "b": (120, 120, 120), "c": (240, 240, 240)}
    bad = {"a/cut.jpg": truncated("JPEG"), "b/cut.png": truncated("PNG"),
           "c/tiny.png": encoded(rgb((240, 240, 240), (10, 10)), "PNG")}
    root = write_folder(tmp_path / "set", {k: (10, v) for k, v in colours.items()}, bad.items())
    caplog.set_level(logging.WARNING, logger="engine.datasets")
    src = open_source(root, NET224)
    assert src.num_train == 33
    for seed in (0, 1):
        x, y, _ = epoch(src, rng=np.random.default_rng(seed))
        assert len(y) == 30 and np.bincount(y).tolist() == [10, 10, 10]
        np.testing.assert_array_equal(x.reshape(30, -1)[:, 0], np.array([10, 120, 240])[y])  # labels intact
    assert src.skipped == 3
    for rel, why in (("a/cut.jpg", "truncated"), ("b/cut.png", "truncated"),
                     ("c/tiny.png", "is 10x10, smaller than the net input 224x224")):
        lines = [r.getMessage() for r in caplog.records if rel.replace("/", os.sep) in r.getMessage()]
        assert len(lines) == 1 and why in lines[0], (rel, lines)  # once, not once per epoch


def test_a_batch_of_only_bad_images_is_left_out_the_same_way_every_time(tmp_path):
    # file order: a/bad0, a/bad1, a/good0..: with batch 2 the first batch is all bad
    root = write_folder(tmp_path / "set", {"a": (9, (50, 50, 50)), "b": (9, (150, 150, 150))},
                        [("a/bad0.jpg", b"junk"), ("a/bad1.png", truncated("PNG"))])
    src = open_source(root, NET224)
    first = epoch(src, batch=2)
    assert first[2] == [2] * 9 and src.skipped == 2   # 20 files in 10 chunks: the all-bad one is dropped
    again = epoch(open_source(root, NET224), batch=2)   # a fresh source (a resumed run) agrees
    assert first[2] == again[2] and np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_mostly_unreadable_dataset_is_an_error(tmp_path):
    bad = [(f"a/bad{i}.jpg", truncated("JPEG")) for i in range(3)]
    root = write_folder(tmp_path / "set", {"a": (8, (9, 9, 9)), "b": (8, (99, 99, 99))}, bad)
    src = open_source(root, NET224)
    with pytest.raises(DataError, match=r"train: 2 of its 19 images are unreadable or too small, more than 10%.*bad1.jpg"):
        src.mean_image()   # the first pass over the data finds it


def test_class_with_no_readable_images_is_an_error(tmp_path):
    root = write_folder(tmp_path / "set", {"a": (12, (9, 9, 9)), "b": (12, (99, 99, 99))},
                        [("c/only.jpg", truncated("JPEG"))])
    src = open_source(root, NET224)
    with pytest.raises(DataError) as err:
        epoch(src)
    msg = str(err.value)
    assert os.path.join("train", "c") in msg and "none of its 1 image(s) can be used" in msg and "only.jpg" in msg


def test_empty_or_misshapen_train_folders_are_errors(tmp_path):
    root = tmp_path / "set"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train has no class subfolders; put each class's images in"):
        open_source(str(root), NET224)
    (root / "train" / "a").mkdir()
    (root / "train" / "b").mkdir()
    with pytest.raises(DataError, match="has class folders but no .jpg/.jpeg/.png images"):
        open_source(str(root), NET224)
    (root / "train" / "a" / "x.png").write_bytes(encoded(rgb((1, 2, 3)), "PNG"))
    with pytest.raises(DataError) as err:
        open_source(str(root), NET224)
    assert os.path.join("train", "b") in str(err.value) and "add its images or remove the folder" in str(err.value)


# --------------------------------------------------------------------------- batch folders
DIMS = 3 * 4 * 4


def write_batches(root, meta=None, **override):
    """A valid folder (data_batch_1..3 of 6 [dims, n] images, 5 classes), then `override`
    = {file name: the dict to pickle in its place}."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        batch = {"data": rng.integers(0, 256, (DIMS, 6), dtype=np.uint8), "labels": list(range(5)) + [0]}
        with open(root / f"data_batch_{k}", "wb") as f:
            pickle.dump(batch, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta if meta is not None else {"label_names": list("abcde"), "num_vis": DIMS}, f)
    for name, obj in override.items():
        with open(root / name, "wb") as f:
            pickle.dump(obj, f)
    return str(root)


def batch(data=None, labels=None):
    return {"data": np.zeros((DIMS, 6), np.uint8) if data is None else data,
            "labels": [0] * 6 if labels is None else labels}


def test_valid_batch_folder_opens(tmp_path):   # the baseline the faults below break
    src = open_source(write_batches(tmp_path / "b"), (3, 4, 4))
    assert (src.num_train, src.num_val, src.num_classes, src.image_shape) == (12, 6, 5, (3, 4, 4))


@pytest.mark.parametrize("fault,pattern", [
    (batch(labels=[0, 1, 2, 3, 4, 5]), r"data_batch_2 has label 5 but .*batches.meta lists only 5 label_names"),
    (batch(labels=[0, 1, -1, 3, 4, 0]), r"data_batch_2: label 2 is -1; labels must be class numbers"),
    (batch(labels=[0, 1, 2.5, 3, 4, 0]), r"data_batch_2: label 2 is 2.5"),
    (batch(data=np.zeros((DIMS, 6, 1), np.uint8)), r"data_batch_2: 'data' has shape \(48, 6, 1\); expected"),
    (batch(data=np.zeros((DIMS, 5), np.uint8)), r"data_batch_2: 'data' has shape 48x5 but there are 6 labels"),
    (batch(data=np.full((DIMS, 6), "x")), r"data_batch_2: 'data' has dtype <U1; expected numbers"),
    (batch(data=np.zeros((DIMS, 6), np.complex64)), r"data_batch_2: 'data' has dtype complex64"),
    (batch(data=np.full((DIMS, 6), np.nan, np.float32)), r"data_batch_2: 'data' holds NaN"),
    (batch(data=np.zeros((27, 6), np.uint8)), r"data_batch_2: images have 27 values but batches.meta says 3x4x4"),
    ({"labels": [0] * 6}, r"data_batch_2 has no 'data' entry"),
    ({"data": np.zeros((DIMS, 6), np.uint8)}, r"data_batch_2 has no 'labels' entry"),
])
def test_broken_batch_file_is_an_error_naming_it(tmp_path, fault, pattern):
    root = write_batches(tmp_path / "b", data_batch_2=fault)
    with pytest.raises(DataError, match=pattern):
        open_source(root, (3, 4, 4))


@pytest.mark.parametrize("meta,pattern", [
    ({"label_names": list("abcde")}, None),   # no num_vis: the layout is guessed from 48 = 3x4x4
    ({"label_names": 5, "num_vis": DIMS}, r"batches.meta: label_names must be a list of class names"),
    ({"label_names": list("abc"), "num_vis": DIMS}, r"data_batch_\d has label 4 but .* 3 label_names"),
])
def test_batches_meta_keys(tmp_path, meta, pattern):
    root = write_batches(tmp_path / "b", meta=meta)
    if pattern is None:
        assert open_source(root, (3, 4, 4)).image_shape == (3, 4, 4)
    else:
        with pytest.raises(DataError, match=pattern):
            open_source(root, (3, 4, 4))


def test_missing_layout_keys_with_an_unguessable_size_say_which_to_add(tmp_path):
    odd = {"data": np.zeros((3 * 4 * 5, 6), np.uint8), "labels": [0] * 6}   # 3x4x5: not square
    root = write_batches(tmp_path / "b", meta={"label_names": list("abcde")},
                         data_batch_1=odd, data_batch_2=odd, data_batch_3=odd)
    with pytest.raises(DataError, match=r"data_batch_1: images have 60 values.*add num_colors and img_size to "
                                        r"batches.meta"):
        open_source(root, (3, 4, 4))


class Plain:   # an innocent class: still not plain data
    def __init__(self):
        self.x = 1


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Evals:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload,what", [
    ({"data": Plain()}, "Plain"),
    ({"data": RunsCode()}, "system"),
    ({"data": Evals()}, "eval"),
    ({"data": np.array([1, "two", 3.0], dtype=object)}, "object array"),
    ({"data": np.zeros(3, dtype=[("a", "i4"), ("b", "O")])}, "NumPy array of dtype |V12"),
    ({"data": [[np.array([{}, []], dtype=object)]]}, "object array"),
    ({"data": np.ndarray, "labels": np.dtype}, "a reference to a class or function"),
    ({"data": collections.OrderedDict}, "a reference to a class or function"),
])
@pytest.mark.parametrize("protocol", [2, 5])
def test_restricted_unpickler_refuses_anything_but_plain_data(tmp_path, payload, what, protocol):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DataError) as err:
        load_pickle(str(path))
    msg = str(err.value)
    assert msg.startswith(f"refusing to load {path}") and what in msg and "\n" not in msg


class Forged:
    """Reduces to `call(*args)` then BUILD with `state`: NumPy's own names, hostile arguments."""

    def __init__(self, call, args, state=None):
        self.call, self.args, self.state = call, args, state

    def __reduce__(self):
        return (self.call, self.args) if self.state is None else (self.call, self.args, self.state)


def reconstruct():
    return np.zeros(1).__reduce__()[0]   # numpy.(_)core.multiarray._reconstruct


@pytest.mark.parametrize("payload,what", [
    # numpy.ndarray called directly can lay an object array over raw bytes (pointers)
    (Forged(np.ndarray, ((2,), "O", b"A" * 16)), "calls numpy.ndarray directly"),
    (Forged(reconstruct(), (np.ndarray, (2,), "O")), "a NumPy object array"),
    # a float dtype whose pickled state claims (flags 1) that it holds object references
    (Forged(reconstruct(), (np.ndarray, (0,), b"b"),
            (1, (2,), Forged(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 1)), False,
             b"A" * 16)), "a NumPy dtype with the state"),
    (Forged(np.dtype, ("V8", False, True)), "a NumPy array of dtype |V8"),
    (Forged(codecs.encode, ("x", "zlib")), "_codecs.encode(str, 'zlib')"),
    (Forged(bytes, (10 ** 6,)), "a call of bytes() with arguments (1000000,)"),
])
def test_restricted_unpickler_checks_what_numpys_own_names_are_asked_to_build(tmp_path, payload, what):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": payload}, protocol=2))
    with pytest.raises(DataError) as err:
        load_pickle(str(path))
    assert str(err.value).startswith(f"refusing to load {path}: it ") and what in str(err.value)


def test_restricted_unpickler_walks_self_references(tmp_path):
    loop = []
    loop.append(loop)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"loop": loop, "deep": [[[[[[np.arange(3)]]]]]]}))
    got = load_pickle(str(path))
    assert got["loop"][0] is got["loop"] and got["deep"][0][0][0][0][0][0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("protocol", [2, 5])
def test_restricted_unpickler_reads_every_plain_array(tmp_path, protocol):
    """The checks of dtype and array states let through what NumPy pickles for plain data."""
    arrays = {"be": np.arange(6, dtype=">i4").reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3), np.float16)),
              "u": np.array(["cat", "zebra"]), "s": np.array([b"ab", b"c"]), "b": np.array([True, False]),
              "c": np.array([1 + 2j], np.complex64), "scalar": np.float64(2.5), "big": np.uint64(2 ** 63),
              "dt": np.dtype("<u2"), "empty": np.zeros((0, 4), np.uint8)}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    got = load_pickle(str(path))
    for k, v in arrays.items():
        assert type(got[k]) is type(v) and (got[k] == v if k == "dt" else np.array_equal(got[k], v)), k
        assert np.asarray(got[k]).dtype.str[1:] == np.asarray(v).dtype.str[1:], k  # NumPy may swap to native


# --------------------------------------------------------------------------- single images
def test_prepare_images_refuses_bad_arrays_in_one_line():
    mean8 = np.full((3, 32, 32), 120, np.float32)      # a net trained on 8-bit pixels
    ok = np.zeros((2, 40, 40, 3), np.uint8)
    assert prepare_images(ok, (3, 24, 24), mean8).shape == (2, 3, 24, 24)
    nan = ok.astype(np.float32)
    nan[1, 3, 3, 0] = np.nan
    inf = ok.astype(np.float64)
    inf[0, 0, 0, 2] = -np.inf
    cases = [
        (nan, "1 of the 2 images hold NaN or infinite values (the first: image 1)"),
        (inf, "hold NaN or infinite"),
        (ok.astype(np.complex64), "dtype complex64"),
        (np.array([["a"]]), "dtype <U1"),
        (np.array([None, 1], dtype=object), "dtype object"),
        (np.full((1, 40, 40, 3), 60000, np.uint16), "values 60000..60000"),
        (np.zeros((40, 40, 4), np.uint8), "images have 4 channel(s)"),
        (np.zeros((2, 40, 40), np.uint8), "images have 1 channel(s)"),
        (np.zeros((1, 3, 40, 40), np.uint8), "channels-first"),
        (np.zeros((10, 10, 3), np.uint8), "images are 10x10, smaller than the net input 24x24"),
        (np.zeros((0, 40, 40, 3), np.uint8), "no images given"),
        (np.zeros((1, 1, 40, 40, 3), np.uint8), "images must be [N,H,W]"),
        ([np.zeros((40, 40, 3), np.uint8), np.zeros((50, 40, 3), np.uint8)], "(40, 40, 3), (50, 40, 3)"),
    ]
    for images, part in cases:
        with pytest.raises(DataError) as err:
            prepare_images(images, (3, 24, 24), mean8)
        assert part in str(err.value) and "\n" not in str(err.value), (part, str(err.value))
    assert prepare_images(ok.astype(np.int64) + 255, (3, 24, 24), mean8).shape == (2, 3, 24, 24)  # in range
    # integers beyond 0..255 are fine for a net whose training data was not 8-bit
    wide = np.full((3, 32, 32), 3000, np.float32)
    assert prepare_images(np.full((1, 40, 40, 3), 4000, np.int32), (3, 24, 24), wide).shape == (1, 3, 24, 24)


TINY_NET = """
name: tiny
input: {shape: [3, 24, 24]}
layers:
  - {name: fc, type: fc, outputs: 2}
  - {name: prob, type: softmax}
"""


def test_net_predict_bad_images_raise_data_error():
    import engine
    net = engine.load(TINY_NET)
    net.preprocess = Preprocess((3, 24, 24), np.full((3, 32, 32), 100, np.float32))
    assert np.asarray(net.predict(np.zeros((1, 32, 32, 3), np.uint8))).shape == (1, 2)
    for images in (np.full((1, 32, 32, 3), np.nan), np.zeros((1, 32, 32, 1), np.uint8),
                   np.zeros((1, 10, 10, 3), np.uint8), np.zeros((1, 32, 32, 3), np.complex128)):
        with pytest.raises(DataError):
            net.predict(images)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from engine.train import Trainer
    tmp = tmp_path_factory.mktemp("tiny")
    net = tmp / "tiny.yaml"
    net.write_text(TINY_NET + "train: {epochs: 1, batch: 4, lr: 0.01}\n")
    Trainer(str(net), data="synthetic:8", out=str(tmp / "run"), log=lambda *_: None).run()
    return tmp / "run"


def test_cli_predict_bad_image_is_one_line_error(tmp_path, tiny_run, capsys):
    from engine.cli import main
    good = tmp_path / "good.png"
    good.write_bytes(encoded(rgb((1, 2, 3), (30, 30)), "PNG"))
    assert main(["predict", str(tiny_run), str(good)]) == 0
    capsys.readouterr()
    for name, data, why in (("cut.jpg", truncated("JPEG"), "truncated"),
                            ("junk.png", b"junk", "not a JPEG or PNG"),
                            ("tiny.png", encoded(rgb((1, 2, 3), (10, 10)), "PNG"), "smaller than the net input"),
                            ("missing.png", None, "No such file")):
        if data is not None:
            (tmp_path / name).write_bytes(data)
        assert main(["predict", str(tiny_run), str(good), str(tmp_path / name)]) == 2
        out = capsys.readouterr()
        err = out.err.strip()
        assert err.startswith("error: ") and why in err and len(err.splitlines()) == 1, err
        assert out.out.startswith(f"{good}: ")   # the good image before it was predicted
    # and as a real process: exit status 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "engine", "predict", str(tiny_run), str(tmp_path / "cut.jpg")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and str(tmp_path / "cut.jpg") in proc.stderr


def test_training_skips_an_all_bad_batch_and_resumes_exactly(tmp_path):
    """Batch 1: every bad image is a batch of only bad images; a resumed run still matches."""
    import engine
    from engine.train import Trainer
    classes = {"a": (12, (30, 30, 30)), "b": (12, (200, 200, 200))}
    root = write_folder(tmp_path / "set", classes, [("a/cut.jpg", truncated("JPEG")), ("b/junk.png", b"junk")])
    net = tmp_path / "tiny.yaml"
    net.write_text(TINY_NET + "train: {epochs: 2, batch: 1, lr: 0.001, augment: {pca: 0}}\n")
    logs = []
    full = Trainer(str(net), data=root, out=str(tmp_path / "full"), log=logs.append).run()
    assert not full["stopped"] and any("skipped 2 unreadable" in line for line in logs)
    # 24 steps an epoch; epoch 2's order puts the bad images 8th and 11th, before this stop
    order = list(np.random.default_rng([0, 1, 0]).permutation(26))
    assert sorted((order.index(0), order.index(25))) == [7, 10]   # a/cut.jpg is file 0, b/junk.png file 25
    stopped = Trainer(str(net), data=root, out=str(tmp_path / "split"), log=lambda *_: None, stop_after=36).run()
    assert stopped["stopped"]
    resumed = Trainer(None, resume=str(tmp_path / "split"), log=lambda *_: None).run()
    assert resumed["metrics"][-1]["train_loss"] == full["metrics"][-1]["train_loss"]
    a = engine.load(None, checkpoint=str(tmp_path / "full")).state_dict()
    b = engine.load(None, checkpoint=str(tmp_path / "split")).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
