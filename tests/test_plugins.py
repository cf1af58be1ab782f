"""Layer types from the user's own Python files (a net's `plugins`): they load only with the
caller's consent, then train, pass check-grads and show in summary and draw like built-ins."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine
from engine import ConfigError, plugins
from engine import checkpoint as ckpt
from engine.cli import main
from engine.config import parse_checkpoint_net
from engine.plugins import checkpoint_dir
from engine.tools.check_grads import check_net
from engine.train import Trainer
from layers.registry import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "plugins", "net.yaml")
SCALE = os.path.join(ROOT, "examples", "plugins", "scale.py")

# a new layer type, written by a test into a folder of its own: PReLU with a slope per channel
PRELU = '''
import numpy as np
from layers.base import Key, Layer
from layers.registry import register


@register
class PReLU(Layer):
    type = "prelu_t"
    keys = {"init_w": Key(float, 0.25, low=0.0, doc="the starting slope for x < 0")}

    def param_shapes(self):
        return {"weight": (self.input_shape[0],)}

    def init_params(self, rng):
        return {"weight": np.full(self.input_shape[0], self.cfg["init_w"], np.float32)}

    def macs(self):
        return int(np.prod(self.input_shape))

    def forward(self, x, params, train=False, rng=None):
        a = params["weight"].reshape(1, -1, 1, 1)
        self._x = x
        return np.where(x > 0, x, a * x).astype(np.float32)

    def backward(self, dy, params, need_dx=True):
        x, a = self._x, params["weight"].reshape(1, -1, 1, 1)
        da = (dy * np.minimum(x, 0)).sum(axis=(0, 2, 3))
        dx = np.where(x > 0, dy, a * dy).astype(np.float32) if need_dx else None
        return dx, {"weight": da.astype(np.float32)}
'''


def small_net(plugin, layer):
    """A net file's text: conv -> the plugin's layer -> fc -> softmax on 2x8x8 images."""
    return textwrap.dedent(f"""\
        name: small
        plugins: [{plugin}]
        input: {{shape: [2, 8, 8]}}
        layers:
          - {{name: conv1, type: conv, filters: 3, size: 3, padding: 1, init_w: 0.3}}
          - {{name: mine, {layer}}}
          - {{name: fc1, type: fc, outputs: 4, init_w: 0.1}}
          - {{name: prob, type: softmax}}
        train: {{data: "synthetic:32", epochs: 2, batch: 8, lr: 0.05}}
        """)


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def quiet(*_):
    pass


def error_for(source, **kw):
    with pytest.raises(ConfigError) as info:
        engine.load(source, **kw)
    return info.value


def test_forget_lets_a_changed_plugin_load_afresh(tmp_path):
    net = write(tmp_path, "net.yaml", small_net("fresh.py", "type: prelu_fresh"))
    write(tmp_path, "fresh.py", PRELU.replace("prelu_t", "prelu_fresh"))
    first = type(engine.load(net, plugins=True).layers[1].layer)
    plugins.forget()
    assert "prelu_fresh" not in REGISTRY
    write(tmp_path, "fresh.py", PRELU.replace("prelu_t", "prelu_fresh").replace("0.25", "0.5"))
    second = type(engine.load(net, plugins=True).layers[1].layer)
    assert second is not first and second.keys["init_w"].default == 0.5


@pytest.fixture(scope="module")
def prelu_net(tmp_path_factory):
    """A plugin file and a net using it, in a folder no other file knows about."""
    folder = tmp_path_factory.mktemp("mine")
    write(folder, "prelu.py", PRELU)
    return write(folder, "net.yaml", small_net("prelu.py", "type: prelu_t"))


# ---- the shipped example -------------------------------------------------------------------
def test_example_shows_in_summary_and_draw(tmp_path):
    net = engine.load(EXAMPLE, plugins=True)
    rows = [line.split() for line in net.summary(batch=8).splitlines()]
    assert ["scale1", "scale", "0", "conv1", "6x28x28", "6", "4,704"] in rows
    np.testing.assert_array_equal(net.state_dict()["scale2.weight"], np.ones(16, np.float32))
    assert main(["draw", EXAMPLE, "-o", str(tmp_path / "net.dot"), "--plugins"]) == 0
    assert "scale1 (scale)" in (tmp_path / "net.dot").read_text()


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The example trained for one epoch of 64 random images: (run folder, result)."""
    out = tmp_path_factory.mktemp("example") / "run"
    result = Trainer(EXAMPLE, plugins=True, data="synthetic:64", epochs=1, batch=16, out=str(out),
                     log=quiet).run()
    return out, result


def test_example_trains_a_few_steps(example_run):
    out, result = example_run
    assert result["metrics"][0]["epoch"] == 1 and np.isfinite(result["metrics"][0]["train_loss"])
    trained = engine.load(EXAMPLE, plugins=True, checkpoint=str(out)).state_dict()["scale1.weight"]
    assert not np.array_equal(trained, np.ones(6, np.float32))      # the solver moved it
    meta = ckpt.verify(ckpt.resolve(str(out)))
    assert "plugins: [scale.py]" in meta["net_text"]


def test_the_example_layer_passes_check_grads(tmp_path):
    net = engine.load(write(tmp_path, "net.yaml", small_net(SCALE, "type: scale, init_w: 0.2")),
                      plugins=True, seed=1)
    results = check_net(net, samples=8)
    assert [(r["layer"], r["param"]) for r in results][:3] == [
        ("conv1", "weight"), ("conv1", "bias"), ("mine", "weight")]
    assert all(r["passed"] for r in results), results


# ---- a new layer type with no other file edited ----------------------------------------------
def test_a_new_type_trains_passes_check_grads_and_shows_in_summary(prelu_net, tmp_path):
    net = engine.load(prelu_net, plugins=True, seed=2)
    assert any(line.split()[:2] == ["mine", "prelu_t"] for line in net.summary().splitlines())
    results = check_net(net, samples=0)
    assert any(r["layer"] == "mine" for r in results) and all(r["passed"] for r in results), results
    result = Trainer(prelu_net, plugins=True, out=str(tmp_path / "run"), log=quiet).run()
    assert [m["epoch"] for m in result["metrics"]] == [1, 2]
    assert result["metrics"][-1]["train_loss"] < result["metrics"][0]["train_loss"]


def test_a_plugin_is_imported_once_per_process(prelu_net, tmp_path):
    first = engine.load(prelu_net, plugins=True).layers[1].layer
    other = write(tmp_path, "other.yaml", small_net(os.path.join(os.path.dirname(prelu_net), "prelu.py"),
                                                    "type: prelu_t, init_w: 0.5"))
    second = engine.load(other, plugins=True).layers[1].layer
    assert type(first) is type(second) is REGISTRY["prelu_t"]


def test_a_plugin_from_a_checkpoint_resolves_against_the_original_net_file(example_run, tmp_path,
                                                                          monkeypatch):
    meta = ckpt.load(str(example_run[0]))[1]
    monkeypatch.chdir(tmp_path)                  # scale.py is not here
    assert parse_checkpoint_net(meta, plugins=True).plugins == [SCALE]
    assert checkpoint_dir({"net_file": EXAMPLE}) == os.path.dirname(SCALE)
    assert checkpoint_dir({"net_file": "x/net.yaml", "plugin_dir": "/elsewhere"}) == "/elsewhere"
    with pytest.raises(ConfigError) as info:
        parse_checkpoint_net(meta)
    assert info.value.file == f"{EXAMPLE} (saved in {meta['path']})" and info.value.line == 5
    assert SCALE in info.value.message and "plugins=True" in info.value.message


def test_load_from_a_checkpoint_alone_and_resume(example_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                  # scale.py is not here
    net = engine.load(None, checkpoint=str(example_run[0]), plugins=True)
    assert net.layers[1].type == "scale"
    assert main(["predict", str(example_run[0]), write_digit(tmp_path), "--plugins"]) == 0
    result = Trainer(None, resume=str(example_run[0]), epochs=2, out=str(tmp_path / "more"), plugins=True,
                     log=quiet).run()
    assert [m["epoch"] for m in result["metrics"]] == [1, 2]


def write_digit(folder):
    from PIL import Image
    path = folder / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    return str(path)


# ---- consent ------------------------------------------------------------------------------------
def test_without_consent_the_error_names_the_net_file_line_and_plugin():
    err = error_for(EXAMPLE)
    assert (err.file, err.line, err.key) == (EXAMPLE, 5, "plugins")
    assert SCALE in err.message and "--plugins" in err.message and "plugins=True" in err.message
    with pytest.raises(ConfigError, match="--plugins"):
        Trainer(EXAMPLE, log=quiet)


def test_the_cli_without_plugins_exits_2_in_one_line_and_with_it_works():
    run = subprocess.run([sys.executable, "-m", "engine", "summary", EXAMPLE], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "net.yaml:5" in lines[0] and "scale.py" in lines[0] and "--plugins" in lines[0]
    run = subprocess.run([sys.executable, "-m", "engine", "check", EXAMPLE, "--plugins"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and "OK (10 layers" in run.stdout, run.stderr


@pytest.mark.parametrize("verb", ["summary", "check", "train", "test", "predict", "check-grads", "show",
                                  "draw", "features", "import-torch", "time"])
def test_every_verb_that_loads_a_net_takes_plugins(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "--plugins" in capsys.readouterr().out


# ---- where the plugins are and what they hold ------------------------------------------------
def test_text_and_dicts_resolve_relative_paths_against_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path, "prelu_cwd.py", PRELU.replace("prelu_t", "prelu_cwd"))
    monkeypatch.chdir(tmp_path)
    text = small_net("prelu_cwd.py", "type: prelu_cwd")
    assert engine.load(text, plugins=True).layers[1].type == "prelu_cwd"
    import yaml
    spec = engine.load(yaml.safe_load(text), plugins=True).spec
    assert spec.plugins == [os.path.realpath(tmp_path / "prelu_cwd.py")]


def test_a_module_name_is_imported(tmp_path, monkeypatch):
    package = tmp_path / "mylayers_t"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(package, "acts.py", PRELU.replace("prelu_t", "prelu_mod"))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = engine.load(small_net("mylayers_t.acts", "type: prelu_mod"), plugins=True)
    assert net.layers[1].type == "prelu_mod"


def test_a_missing_plugin_file(tmp_path):
    net = write(tmp_path, "net.yaml", small_net("nowhere.py", "type: scale"))
    err = error_for(net, plugins=True)
    assert (err.file, err.line, err.key) == (net, 2, "plugins")
    assert err.message == f"plugin file not found: {os.path.realpath(tmp_path / 'nowhere.py')}"


def test_a_plugin_that_fails_to_import_says_why_in_one_line(tmp_path):
    write(tmp_path, "broken.py", "import numpy\n\nSCALE = 1 / 0\n")
    net = write(tmp_path, "net.yaml", small_net("broken.py", "type: scale"))
    err = error_for(net, plugins=True)
    assert (err.file, err.line) == (net, 2)
    assert err.message == (f"plugin {os.path.realpath(tmp_path / 'broken.py')} failed to import (line 3): "
                           "ZeroDivisionError: division by zero")
    write(tmp_path, "typo.py", "def f(:\n    pass\n")
    err = error_for(write(tmp_path, "net2.yaml", small_net("typo.py", "type: scale")), plugins=True)
    assert "typo.py failed to import (line 1): SyntaxError:" in err.message and "\n" not in str(err)


def test_a_failed_import_leaves_nothing_registered(tmp_path):
    write(tmp_path, "half.py", PRELU.replace("prelu_t", "prelu_half") + "\nraise RuntimeError('oops')\n")
    net = write(tmp_path, "net.yaml", small_net("half.py", "type: prelu_half"))
    assert "RuntimeError: oops" in error_for(net, plugins=True).message
    assert "prelu_half" not in REGISTRY
    write(tmp_path, "half.py", PRELU.replace("prelu_t", "prelu_half"))     # fixed: imports now
    assert engine.load(net, plugins=True).layers[1].type == "prelu_half"


def test_a_type_that_clashes_with_a_builtin_or_another_plugin(tmp_path):
    write(tmp_path, "conv.py", PRELU.replace('"prelu_t"', '"conv"'))
    net = write(tmp_path, "net.yaml", small_net("conv.py", "type: conv, filters: 2, size: 1"))
    err = error_for(net, plugins=True)
    assert (err.file, err.line, err.key) == (net, 2, "plugins")
    assert err.message == (f"plugin {os.path.realpath(tmp_path / 'conv.py')} registers layer type 'conv', which is a "
                           "built-in layer type: give its class another `type`")
    assert REGISTRY["conv"].__module__ == "layers.conv"
    write(tmp_path, "again.py", open(SCALE).read())          # a copy of the example: type `scale`
    engine.load(EXAMPLE, plugins=True)
    err = error_for(write(tmp_path, "net2.yaml", small_net("again.py", "type: scale")), plugins=True)
    assert f"which is already the type of plugin {SCALE}" in err.message


def test_a_plugin_without_a_layer_type(tmp_path):
    write(tmp_path, "empty.py", "X = 1\n")
    err = error_for(write(tmp_path, "net.yaml", small_net("empty.py", "type: scale")), plugins=True)
    assert "registers no layer type" in err.message and "@register" in err.message


def test_bad_plugins_values(tmp_path):
    for value, words in [("3", "must be a list of plugin files"), ("[a b]", "neither a .py file nor a module")]:
        text = small_net("x.py", "type: scale").replace("plugins: [x.py]", f"plugins: {value}")
        err = error_for(write(tmp_path, "net.yaml", text), plugins=True)
        assert err.key == "plugins" and err.line == 2 and words in err.message


def test_unknown_types_suggest_plugin_types_and_other_nets_plugins_stay_theirs(tmp_path):
    err = error_for(write(tmp_path, "net.yaml", small_net(SCALE, "type: scael")), plugins=True)
    assert (err.layer, err.key) == ("mine", "type") and "did you mean 'scale'?" in err.message
    engine.load(EXAMPLE, plugins=True)
    err = error_for(small_net("x.py", "type: scale").replace("plugins: [x.py]\n", ""))
    assert err.message == (f"layer type 'scale' comes from plugin {SCALE}, which this net does not "
                           "name: add it to the net's `plugins`")
