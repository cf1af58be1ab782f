"""Raw images in, prepared arrays in: predict / features / prepare against forward, the
one-line errors of each, engine.load of a run folder, and the errors importable from engine."""
import os

import numpy as np
import pytest

import engine
import engine.checkpoint
import engine.datasets
from engine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "engine", "datasets", "digits.npz")

# A small net on the embedded digits, input 1x24x24 (so the centre crop of the 28x28 digits
# is part of the preparation), only fc layers (quick to compile and to train).
TINY = {"name": "tinydigits", "input": {"shape": [1, 24, 24]}, "defaults": {"init_w": 0.05},
        "layers": [{"name": "hidden", "type": "fc", "outputs": 32, "neuron": "relu"},
                   {"name": "out", "type": "fc", "outputs": 10},
                   {"name": "prob", "type": "softmax"}]}


def quiet(*_):
    pass


def one_line(excinfo):
    text = str(excinfo.value)
    assert text and "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of TINY on the digits: (run folder, the trainer's result)."""
    out = tmp_path_factory.mktemp("raw") / "run"
    result = Trainer(TINY, data="digits", epochs=1, batch=64, lr=0.05, out=str(out), log=quiet).run()
    return str(out), result


@pytest.fixture(scope="module")
def net(run):
    return engine.load(None, checkpoint=run[0])


@pytest.fixture(scope="module")
def digits():
    d = np.load(DIGITS)
    return d["images"], d["labels"]


def test_predict_features_prepare_equal_forward_on_prepared(net, digits):
    images = digits[0][3400:3416]                           # uint8 [16, 28, 28]
    x = net.prepare(images)
    assert x.dtype == np.float32 and x.shape == (16, 1, 24, 24) and x.flags.c_contiguous
    # the stored preparation: centre crop, mean subtracted, scaled
    want = net.preprocess.test(images[:, None])
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(net.predict(images), net.forward(x))
    np.testing.assert_array_equal(net.features(images, "hidden"), net.forward(x, outputs=["hidden"])["hidden"])
    both = net.features(images, ["hidden", "data"])
    assert set(both) == {"hidden", "data"}
    np.testing.assert_array_equal(both["data"], x)
    assert both["hidden"].shape == (16, 32)
    top = net.predict(images, top=3)
    probs = net.forward(x)
    assert [[name for name, _ in row] for row in top] == [[str(j) for j in np.argsort(-p)[:3]] for p in probs]


def test_every_layout_gives_the_same_answer(net, digits):
    from PIL import Image
    images = digits[0][3400:3404]
    want = net.predict(images)
    layouts = {
        "uint8 [N,H,W]": images,
        "float [N,H,W]": images.astype(np.float32),
        "float64 [N,H,W]": images.astype(np.float64),
        "[N,H,W,1]": images[..., None],
        "list of [H,W]": list(images),
        "PIL list": [Image.fromarray(im) for im in images],
        "PIL RGB list": [Image.fromarray(im).convert("RGB") for im in images],
    }
    for what, given in layouts.items():
        np.testing.assert_allclose(net.predict(given), want, rtol=1e-5, atol=1e-7, err_msg=what)
        np.testing.assert_allclose(net.prepare(given), net.prepare(images), rtol=1e-6, err_msg=what)
        np.testing.assert_allclose(net.features(given, "hidden"), net.features(images, "hidden"),
                                   rtol=1e-5, atol=1e-6, err_msg=what)
    singles = {"[H,W]": images[0], "[H,W,1]": images[0][..., None], "PIL": Image.fromarray(images[0])}
    for what, given in singles.items():
        np.testing.assert_allclose(net.predict(given), want[:1], rtol=1e-5, atol=1e-7, err_msg=what)
        assert net.prepare(given).shape == (1, 1, 24, 24), what


@pytest.mark.parametrize("bad, says", [
    (np.zeros((2, 3, 4, 28, 28), np.uint8), "got shape (2, 3, 4, 28, 28)"),
    (np.zeros((2, 1, 28, 28), np.uint8), "channels-first"),
    (np.zeros((2, 28, 28, 3), np.uint8), "channel"),
    (np.zeros((2, 10, 10), np.uint8), "smaller than the net input 24x24"),
    (np.zeros((2, 28, 28), np.complex64), "got dtype complex64"),
    (np.array([["a", "b"], ["c", "d"]]), "uint8 or float"),
    (np.zeros((0, 28, 28), np.uint8), "no images"),
    (None, "got dtype object"),
])
def test_wrong_images_are_one_line_errors(net, bad, says):
    for call in (net.prepare, net.predict, lambda im: net.features(im, "hidden")):
        with pytest.raises(ValueError) as e:
            call(bad)
        assert says in one_line(e)


def test_wrong_layer_or_top_is_one_line_error(net, digits):
    images = digits[0][:2]
    with pytest.raises(ValueError) as e:
        net.features(images)                               # the default "fc7": not in this net
    assert "no layer 'fc7'" in one_line(e) and "hidden" in str(e.value)
    with pytest.raises(ValueError) as e:
        net.features(images, 3)
    assert "layer name" in one_line(e)
    for top in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError) as e:
            net.predict(images, top=top)
        assert "top must be" in one_line(e)


def test_forward_on_raw_images_points_to_predict(net, digits):
    images = digits[0][:4]
    prepared = net.preprocess.test(images[:, None])
    raw_like = {
        "uint8 [N,H,W]": images,
        "uint8 [N,C,H,W]": prepared.astype(np.uint8),
        "float [N,H,W]": images[:, 2:26, 2:26].astype(np.float32),
        "float [N,H,W,1]": images[:, 2:26, 2:26, None].astype(np.float32),
        "raw pixel values as [N,C,H,W] float32": images[:, None, 2:26, 2:26].astype(np.float32),
        "a list": list(prepared),
    }
    for what, x in raw_like.items():
        with pytest.raises(ValueError) as e:
            net.forward(x)
        text = one_line(e)
        assert "prepared float32 [N, 1, 24, 24]" in text and "net.predict(images)" in text, (what, text)
        assert "net.prepare(images)" in text, (what, text)
    with pytest.raises(ValueError) as e:
        net.forward(np.zeros((2, 1, 28, 28), np.float32))   # another size
    assert "got float32 [2, 1, 28, 28]" in one_line(e)
    with pytest.raises(ValueError) as e:
        net.forward(prepared.astype(np.float64))
    assert "astype(np.float32)" in one_line(e)
    # a net with no stored preparation still refuses uint8 and says what it takes
    fresh = engine.load(TINY)
    with pytest.raises(ValueError) as e:
        fresh.forward(images[:, None, 2:26, 2:26])
    assert "looks like raw images" in one_line(e)
    fresh.forward(images[:, None, 2:26, 2:26].astype(np.float32))     # no preparation known: no range


def test_without_a_preparation_prepare_predict_features_say_how_to_get_one(digits):
    fresh = engine.load(TINY)
    for call in (fresh.prepare, fresh.predict, lambda im: fresh.features(im, "hidden")):
        with pytest.raises(ValueError) as e:
            call(digits[0][:2])
        assert "engine.load(RUN_FOLDER)" in one_line(e)


def test_load_of_a_run_folder_or_checkpoint_file(run, net):
    out, _ = run
    for given in (out, os.path.join(out, "1.json"), os.path.join(out, "1.npz")):
        again = engine.load(given)
        assert again.name == "tinydigits"
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=(given, k))
        np.testing.assert_array_equal(again.preprocess.mean, net.preprocess.mean)
        assert again.preprocess.scale == net.preprocess.scale
    from pathlib import Path
    assert engine.load(Path(out)).state_dict().keys() == net.state_dict().keys()
    # a run given as the net beside checkpoint= is a one-line ConfigError
    with pytest.raises(engine.ConfigError) as e:
        engine.load(out, checkpoint=out)
    assert "not a net" in one_line(e)


def test_load_of_a_folder_without_checkpoints_says_so(tmp_path):
    with pytest.raises(engine.CheckpointError) as e:
        engine.load(str(tmp_path))
    assert "no usable checkpoint" in one_line(e)


def test_a_net_that_does_not_fit_says_so_once(run):
    out, _ = run
    other = dict(TINY, layers=[{"name": "hidden2", "type": "fc", "outputs": 32, "neuron": "relu"}] + TINY["layers"][1:])
    with pytest.raises(engine.CheckpointError) as e:
        engine.load(other, checkpoint=out)
    text = one_line(e)
    assert text.count("does not fit") == 1 and text.count("tinydigits") == 1, text
    assert '"' not in text and "missing hidden2.weight" in text and "unexpected hidden.weight" in text, text
    wider = dict(TINY, layers=[dict(TINY["layers"][0], outputs=33)] + TINY["layers"][1:])
    with pytest.raises(engine.CheckpointError) as e:
        engine.load(wider, checkpoint=out)
    text = one_line(e)
    assert text.count("does not fit") == 1 and '"' not in text, text


def test_errors_importable_from_engine():
    from engine import CheckpointError, DataError
    assert DataError is engine.datasets.DataError
    assert CheckpointError is engine.checkpoint.CheckpointError
    assert {"DataError", "CheckpointError"} <= set(engine.__all__)


def test_raw_digits_predict_agrees_with_prepared_forward(run, net, digits):
    """On the real validation digits: predict on the raw uint8 pixels gives what training's
    own evaluation (forward on the prepared batch) gives, while the raw pixels fed to
    forward as they are, the silent mistake, are refused."""
    _, result = run
    images, labels = digits[0][3400:], digits[1][3400:]
    probs = net.predict(images)
    np.testing.assert_allclose(probs, net.forward(net.preprocess.test(images[:, None])), rtol=1e-6, atol=1e-8)
    accuracy = float(np.mean(probs.argmax(1) == labels))
    assert accuracy == pytest.approx(1 - result["metrics"][-1]["val_top1"], abs=1e-9)
    assert accuracy > 0.8
    with pytest.raises(ValueError, match="look like raw pixels"):
        net.forward(images[:, None, 2:26, 2:26].astype(np.float32))
