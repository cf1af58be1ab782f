"""Data that does not suit what is asked of it says so (issue 13): `test --multiview` on digits
(mirror images of digits are no digits) is refused, and images far from the net input (colour
photos for a 1x28x28 net) get one warning line with the numbers and the `--set` to use."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.datasets import Preprocess, fit_warning, multiview_problem, open_source
from helpers import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIGIT_NET = """name: tinydigits
input: {shape: [1, 28, 28]}
layers:
  - {name: fc1, type: fc, outputs: 10, init_w: 0.01}
  - {name: prob, type: softmax}
train: {data: digits, epochs: 1, batch: 200, lr: 0.05}
"""


def test_multiview_on_digits_is_refused_saying_why(tmp_path, capsys):
    net = tmp_path / "net.yaml"
    net.write_text(DIGIT_NET)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", net, "--out", run)
    assert rc == 0, err
    rc, out, err = cli(capsys, "test", "--checkpoint", run, "--multiview")
    assert rc == 2 and out == "", (out, err)
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    assert "mirror" in line and "digits are not mirror-symmetric" in line and "test without --multiview" in line
    rc, out, err = cli(capsys, "test", "--checkpoint", run)      # what the message says to do works
    assert rc == 0 and "tinydigits on digits validation, 600 images" in out, err


def _folder_source(tmp_path, size=(60, 40), colour=True, classes=2, per_class=2):
    from PIL import Image
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if colour else (size[1], size[0])
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_multiview_problem_follows_the_source_and_the_training_flips(tmp_path):
    pytest.importorskip("PIL")
    digits = open_source("digits", (1, 28, 28))
    mean = np.zeros((1, 28, 28), np.float32)
    assert "not mirror-symmetric" in multiview_problem(digits, Preprocess((1, 28, 28), mean))
    assert multiview_problem(digits, Preprocess((1, 28, 28), mean, flip=True)) is None   # trained on mirrors
    photos = open_source(str(_folder_source(tmp_path)), (3, 32, 32))
    mean = np.zeros((3, 256, 256), np.float32)
    assert multiview_problem(photos, Preprocess((3, 32, 32), mean, flip=True)) is None
    # flips turned off for a source that flips by default: the user said its images are not symmetric
    assert "train.augment.flip: false" in multiview_problem(photos, Preprocess((3, 32, 32), mean))
    # a source that does not flip by default but may be mirrored (CIFAR batches): allowed
    photos.default_augment = dict(photos.default_augment, flip=False)
    assert multiview_problem(photos, Preprocess((3, 32, 32), mean)) is None


def test_colour_photos_for_a_grey_28x28_net_warn_once_with_the_numbers(tmp_path, caplog):
    pytest.importorskip("PIL")
    root = _folder_source(tmp_path, size=(300, 260))
    caplog.set_level(logging.WARNING, logger="engine.datasets")
    open_source(str(root), (1, 28, 28))
    lines = [r.getMessage() for r in caplog.records if "net's input" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    line = lines[0]
    for part in ("colour images (e.g. 300x260)", "stored as 1x256x256", "net's input is 1x28x28",
                 "turned grey", "random 28x28 patches", "1.2% of each image",
                 "--set input.shape=[3,224,224]", "nets/alexnet.yaml --set fc8.outputs=2"):
        assert part in line, (part, line)
    caplog.clear()
    open_source(str(root), (3, 224, 224))       # what AlexNet takes: nothing to say
    open_source(str(root), (3, 200, 200))
    assert not [r for r in caplog.records if "net's input" in r.getMessage()]


def test_small_grey_net_on_grey_images_warns_only_about_the_size(tmp_path):
    pytest.importorskip("PIL")
    root = _folder_source(tmp_path, size=(28, 28), colour=False)
    src = open_source(str(root), (1, 28, 28))
    text = fit_warning(src, (1, 28, 28))
    assert "grey images (e.g. 28x28)" in text and "blown up to 256" in text and "turned grey" not in text
    assert "--set input.shape=[1,224,224]" in text and "alexnet" not in text


def test_the_warning_reaches_the_command_line(tmp_path):
    """A real `python -m engine train` prints the warning line on stderr (here before the
    class-count error stops it: 2 classes, a 10-way net)."""
    pytest.importorskip("PIL")
    root = _folder_source(tmp_path, size=(300, 260))
    net = tmp_path / "net.yaml"
    net.write_text(DIGIT_NET)
    p = subprocess.run([sys.executable, "-m", "engine", "train", str(net), "--data", str(root),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert any(s.startswith("warning: photos: colour images") and "turned grey" in s for s in lines), p.stderr
    assert lines[-1].startswith(f"error: {net}:4: layer 'fc1' has outputs: 10, but the data (photos) has 2 "
                                "classes: add --set fc1.outputs=2"), p.stderr


def test_multiview_still_averages_ten_views_where_mirrors_are_fine():
    import engine
    from engine.train import evaluate
    net = engine.load("name: t\ninput: {shape: [3, 8, 8]}\nlayers:\n  - {name: fc, type: fc, outputs: 4}\n"
                      "  - {name: prob, type: softmax}\n")
    src = open_source("synthetic:20", (3, 8, 8), num_classes=4)       # may be mirrored; not flipped by default
    pre = Preprocess((3, 8, 8), np.zeros((3, 8, 8), np.float32))
    one, ten = evaluate(net, src, pre, batch=8), evaluate(net, src, pre, batch=8, multiview=True)
    assert ten["n"] == one["n"] == src.num_val and ten["loss"] != one["loss"]
