"""`show` (filters, cost curves, predictions as PNG) and `features` on a briefly trained LeNet."""
import os

import numpy as np
import pytest
from PIL import Image

import engine
from engine.cli import main
from engine.datasets import open_source
from engine.tools import canvas, features, show
from engine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """LeNet-5 trained for two epochs on the embedded digits."""
    out = tmp_path_factory.mktemp("lenet") / "run"
    Trainer(LENET, epochs=2, out=str(out), log=lambda *a: None).run()
    return str(out)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def has_colour(px, colour):
    return bool(np.any(np.all(px.reshape(-1, 3) == np.array(colour), axis=1)))


# ---- filters ----------------------------------------------------------------------
@pytest.mark.parametrize("layer, count, cols, tile", [("conv1", 6, 3, 5), ("conv2", 16 * 6, 6, 5),
                                                      ("fc3", 64 * 16, 16, 5)])
def test_filters_grid(run, tmp_path, layer, count, cols, tile):
    """conv1 (1 channel): a near-square grid of 6 grey tiles; conv2 (6 channels): a row per
    filter, a tile per channel; fc3 reads pool2's 16x5x5: its first 64 rows as 16-channel filters."""
    out = tmp_path / "f.png"
    assert main(["show", run, "--filters", layer, "-o", str(out)]) == 0
    zoom = show.zoom_for(cols, tile)
    rows = -(-count // cols)
    grid_w, grid_h = 2 + cols * (tile * zoom + 2), 2 + rows * (tile * zoom + 2)
    px = pixels(out)
    title_h = px.shape[0] - grid_h
    assert px.shape[1] >= grid_w and 0 < title_h < 80
    x0 = (px.shape[1] - grid_w) // 2
    grid = px[title_h:, x0:x0 + grid_w]
    sep = np.array([64, 64, 64])
    for r in range(rows + 1):                    # the separators lie where the grid size says
        assert np.all(grid[r * (tile * zoom + 2)] == sep)
    for c in range(cols + 1):
        assert np.all(grid[:, c * (tile * zoom + 2)] == sep)
    first_row = grid[2:2 + tile * zoom]          # filter 0 whole (and in conv1, filters 1, 2)
    assert first_row.std() > 10                  # filters, not a blank
    assert first_row.min() == 0 and first_row.max() == 255     # each scaled to its min..max


def test_colour_filters_are_rgb_tiles(tmp_path):
    net = engine.load(os.path.join(ROOT, "nets", "cifar10-18pct.yaml"), seed=3)
    image = show.filters_image(net, "conv1")
    px = np.asarray(image)
    assert image.width >= 6 * 5 * show.zoom_for(6, 5)                 # 32 filters: 6 columns
    assert np.any(px[..., 0] != px[..., 1])                          # colour, not grey


def test_filters_of_an_unknown_or_weightless_layer_exit_2(run, tmp_path, capsys):
    assert main(["show", run, "--filters", "conv9", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no layer named 'conv9'" in err and "conv1, conv2, fc3, fc4, fc5" in err
    assert main(["show", run, "--filters", "pool1", "-o", str(tmp_path / "x.png")]) == 2
    assert "has no weights" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---- cost ----------------------------------------------------------------------------
def test_cost_curves(run, tmp_path):
    out = tmp_path / "cost.png"
    assert main(["show", run, "--cost", "-o", str(out)]) == 0
    px = pixels(out)
    assert px.shape == (420, 1000, 3)
    assert px.std() > 10
    left, right = px[:, :500], px[:, 500:]
    assert has_colour(left, canvas.SERIES[0]) and has_colour(left, canvas.SERIES[1])    # train, validation
    assert has_colour(right, canvas.SERIES[3]) and has_colour(right, canvas.SERIES[2])  # top-1, top-5


def test_cost_needs_metrics():
    with pytest.raises(engine.ConfigError, match="no per-epoch metrics"):
        show.cost_image([], "empty")


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0.013, 0.27), (1, 20), (0.5, 0.5), (-3, 7)]:
        t = canvas.nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) >= 2


# ---- predictions -------------------------------------------------------------------------
def test_preds_grid(run, tmp_path):
    out = tmp_path / "preds.png"
    assert main(["show", run, "--preds", "--count", "8", "-o", str(out)]) == 0
    px = pixels(out)
    assert px.shape[1] == 4 * (112 + 24 + 150 + 70) + 20 and px.shape[0] == 2 * (112 + 40) + 50
    assert has_colour(px, canvas.GOOD)            # the true class's bar
    assert px.std() > 10


def test_preds_only_errors_are_wrong(run):
    net = engine.load(None, checkpoint=run)
    source = open_source("digits", net.input_shape)
    picks = show.pick_predictions(net, source, count=5, only_errors=True)
    assert 0 < len(picks) <= 5
    assert all(int(np.argmax(p)) != label for _, label, p in picks)
    every = show.pick_predictions(net, source, count=8, seed=1)
    assert len(every) == 8 and all(abs(p.sum() - 1) < 1e-4 for _, _, p in every)


# ---- features ------------------------------------------------------------------------------
def test_features_npy_with_labels(run, tmp_path):
    out = tmp_path / "feats.npy"
    assert main(["features", LENET, "--checkpoint", run, "--layer", "fc4", "-o", str(out), "--batch", "100"]) == 0
    feats = np.load(out)
    labels = np.load(tmp_path / "feats-labels.npy")
    source = open_source("digits", (1, 28, 28))
    assert feats.shape == (600, 84) and feats.dtype == np.float32
    assert np.array_equal(labels, np.concatenate([lab for _, lab in source.batches("val", 600)]))
    net = engine.load(LENET, checkpoint=run)
    raw, _ = next(source.batches("val", 100))
    expected = net.forward(net.preprocess.test(raw), outputs=["fc4"])["fc4"]
    np.testing.assert_array_equal(feats[:100], expected)
    assert sorted(os.listdir(tmp_path)) == ["feats-labels.npy", "feats.npy"]      # no temporaries


def test_features_npz_several_layers_train_split(run, tmp_path):
    out = tmp_path / "feats.npz"
    assert main(["features", LENET, "--checkpoint", run, "--layer", "fc3,fc5", "--split", "train",
                 "-o", str(out)]) == 0
    with np.load(out) as z:
        assert z["features"].shape == (3400, 120 + 10)
        assert z["labels"].shape == (3400,)
        assert list(z["class_names"]) == [str(i) for i in range(10)]
    assert sorted(os.listdir(tmp_path)) == ["feats.npz"]


def test_features_unknown_layer_lists_the_layers(run, tmp_path, capsys):
    assert main(["features", LENET, "--checkpoint", run, "--layer", "fc7", "-o", str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "unknown layer(s) fc7" in err and "conv1, pool1, conv2, pool2, fc3, fc4, fc5, prob" in err
    assert os.listdir(tmp_path) == []


def test_features_labels_path():
    assert features.labels_path("out/feats.npy") == "out/feats-labels.npy"
