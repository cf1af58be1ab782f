"""`--set LAYER.KEY=VALUE` on every verb that reads a net, `overrides=` in Python, overrides kept
with the checkpoint, and the class-count error that says which `--set` fixes it (issue 13)."""
import json
import os

import pytest

import engine
from engine import ConfigError
from engine.cli import build_parser
from helpers import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")

TINY = """name: tiny
input: {shape: [1, 6, 6]}
layers:
  - {name: fc1, type: fc, outputs: 10, init_w: 0.1}
  - {name: prob, type: softmax}
train:
  data: "synthetic:64"
  epochs: 1
  batch: 32
  lr: 0.01
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def test_every_verb_that_reads_a_net_takes_set():
    parser = build_parser()
    for argv in (["train", "n.yaml"], ["check", "n.yaml"], ["summary", "n.yaml"], ["time", "n.yaml"],
                 ["draw", "n.yaml", "-o", "n.svg"], ["check-grads", "n.yaml"],
                 ["test", "--checkpoint", "run"], ["features", "n.yaml", "--checkpoint", "r", "--layer", "fc",
                                                   "-o", "f.npy"], ["import-torch", "w.pth", "n.yaml", "-o", "r"],
                 ["export", "n.yaml", "-o", "n.onnx"]):
        args = parser.parse_args(argv + ["--set", "fc8.outputs=5", "--set", "train.epochs=3"])
        assert args.overrides == ["fc8.outputs=5", "train.epochs=3"], argv
        assert parser.parse_args(argv).overrides == [], argv


def test_check_with_set_and_its_errors(capsys):
    rc, out, err = cli(capsys, "check", LENET, "--set", "fc5.outputs=5", "--set", "train.epochs=3",
                       "--set", "conv1.neuron=tanh[1.7159,0.6667]", "--set", "input.shape=[3,32,32]")
    assert rc == 0 and "OK" in out and "--set fc5.outputs=5" in out, (out, err)
    bad = {
        "fc5.outptus=5": "--set fc5.outptus=5: unknown key 'outptus' of layer 'fc5'",
        "fc9.outputs=5": "--set fc9.outputs=5: no layer named 'fc9' (did you mean 'fc5'?)",
        "fc5.outputs=0": "--set fc5.outputs=0: must be >= 1",
        "fc5.outputs=five": "--set fc5.outputs=five:",
        "conv1.neuron=relux": "--set conv1.neuron=relux: unknown neuron 'relux'",
        "train.epoch=3": "--set train.epoch=3: unknown key 'epoch' of the train section (did you mean 'epochs'?)",
        "train.augment.flp=true": "(did you mean 'flip'?)",
        "input.shape=[3,32]": "--set input.shape=[3,32]: input shape must be three positive integers",
        "fc5.outputs": "--set fc5.outputs: expected LAYER.KEY=VALUE",
        "fc5.outputs=[1": "--set fc5.outputs=[1: the value is not valid YAML",
    }
    for text, part in bad.items():
        rc, out, err = cli(capsys, "check", LENET, "--set", text)
        assert rc == 2 and part in err and err.startswith("error: "), (text, err)
        assert len(err.strip().splitlines()) == 1, err
    rc, _, err = cli(capsys, "check", LENET, "--set", "fc5.outptus=5")
    assert "(did you mean 'outputs'?)" in err and LENET in err
    # a value that passes its own check but not the shapes: the file's line and the override
    rc, _, err = cli(capsys, "check", LENET, "--set", "conv1.size=99")
    assert rc == 2 and "(--set conv1.size=99): layer 'conv1', key 'size'" in err, err


def test_load_with_overrides_in_python(tmp_path):
    net = engine.load(LENET, overrides={"fc5.outputs": 5, "input.shape": [3, 32, 32], "train.batch": 16})
    assert net.num_classes == 5 and net.input_shape == (3, 32, 32) and net.spec.train["batch"] == 16
    assert net.spec.overrides == ["fc5.outputs=5", "input.shape=[3, 32, 32]"]     # train.* live in settings
    assert engine.load(LENET, overrides=["fc5.outputs=7"]).num_classes == 7
    data = {"name": "d", "input": {"shape": [1, 6, 6]},
            "layers": [{"name": "fc1", "type": "fc", "outputs": 3}, {"name": "prob", "type": "softmax"}]}
    assert engine.load(data, overrides={"fc1.outputs": 4}).num_classes == 4
    assert data["layers"][0]["outputs"] == 3          # the caller's dict is left alone
    with pytest.raises(ConfigError) as e:
        engine.load(LENET, overrides={"fc5.outptus": 5})
    assert "unknown key 'outptus' of layer 'fc5'" in str(e.value) and "did you mean 'outputs'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        engine.load(LENET, overrides={"conv1.size": 99})
    assert e.value.line == 8 and e.value.layer == "conv1" and "conv1.size=99" in str(e.value)
    # the Trainer takes them too
    from engine.train import Trainer
    t = Trainer(LENET, data="synthetic:8", overrides={"fc5.outputs": 3, "train.epochs": 2},
                out=str(tmp_path / "r"), log=lambda *_: None)
    assert t.net.num_classes == 3 and t.settings["epochs"] == 2


def test_summary_draw_time_check_grads_take_set(tiny, tmp_path, capsys):
    rc, out, _ = cli(capsys, "summary", tiny, "--set", "fc1.outputs=7", "--batch", "4")
    assert rc == 0 and engine.load(tiny, overrides={"fc1.outputs": 7}).num_params == 36 * 7 + 7
    assert str(36 * 7 + 7) in out and str(36 * 10 + 10) not in out
    dot = tmp_path / "n.dot"
    rc, out, _ = cli(capsys, "draw", tiny, "-o", dot, "--set", "fc1.outputs=7")
    assert rc == 0 and "outputs=7" in dot.read_text()
    rc, out, _ = cli(capsys, "time", tiny, "--set", "fc1.outputs=7", "--batch", "2", "--iterations", "1")
    assert rc == 0 and "fc1" in out
    rc, out, _ = cli(capsys, "check-grads", tiny, "--set", "fc1.outputs=3", "--samples", "2")
    assert rc == 0 and "ALL 2 TESTS PASSED" in out
    for verb in (["summary", tiny], ["draw", tiny, "-o", dot], ["time", tiny], ["check-grads", tiny]):
        rc, _, err = cli(capsys, *verb, "--set", "fc1.outptus=3")
        assert rc == 2 and "--set fc1.outptus=3: unknown key 'outptus'" in err, (verb, err)


def test_overrides_are_kept_with_the_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", tiny, "--set", "fc1.outputs=4", "--set", "train.epochs=1",
                       "--out", run)
    assert rc == 0, err
    meta = json.loads((run / "1.json").read_text())
    assert meta["overrides"] == ["fc1.outputs=4"] and meta["settings"]["epochs"] == 1
    assert "outputs: 10" in meta["net_text"]          # the file's text, with the overrides beside it
    # every reader of the checkpoint sees the overridden net
    assert engine.load(str(run)).num_classes == 4
    assert "test --checkpoint" in out and f"test {tiny}" not in out   # the saved net, not the file
    rc, out, err = cli(capsys, "test", "--checkpoint", run)
    assert rc == 0 and "tiny on synthetic validation" in out, err
    # resume: the stored overrides come back; a new train.* --set extends the run
    rc, out, err = cli(capsys, "train", "--resume", run, "--set", "train.epochs=2")
    assert rc == 0 and "epoch   2" in out, (out, err)
    assert json.loads((run / "2.json").read_text())["overrides"] == ["fc1.outputs=4"]
    # the net file without the override does not fit the weights: a one-line error
    rc, _, err = cli(capsys, "test", tiny, "--checkpoint", run)
    assert rc == 2 and "does not fit" in err
    rc, out, err = cli(capsys, "test", tiny, "--checkpoint", run, "--set", "fc1.outputs=4")
    assert rc == 0, err


def test_class_count_error_names_file_layer_and_the_set_to_use(tmp_path, capsys):
    path = tmp_path / "net.yaml"
    path.write_text(TINY.replace("[1, 6, 6]", "[1, 28, 28]").replace('"synthetic:64"', "digits")
                    .replace("outputs: 10", "outputs: 5"))
    rc, _, err = cli(capsys, "train", path, "--out", tmp_path / "r")
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}:4: layer 'fc1' has outputs: 5, but the data (digits) has 10 classes"), line
    assert "--set fc1.outputs=10" in line
    # the fix it names works (stopped before training: only the check is wanted here)
    from engine.train import Trainer
    t = Trainer(str(path), overrides=["fc1.outputs=10"], out=str(tmp_path / "r2"), log=lambda *_: None)
    assert t.net.num_classes == 10
    # through dropout and the softmax back to the fc that sets the count
    net = ('name: two\ninput: {shape: [1, 28, 28]}\nlayers:\n  - {name: fc7, type: fc, outputs: 8}\n'
           '  - {name: top, type: fc, outputs: 3}\n  - {name: drop, type: dropout}\n'
           '  - {name: prob, type: softmax}\n')
    with pytest.raises(engine.DataError) as e:
        Trainer(net, data="digits", out=str(tmp_path / "r3"), log=lambda *_: None)
    assert "layer 'top' has outputs: 3" in str(e.value) and "--set top.outputs=10" in str(e.value)
