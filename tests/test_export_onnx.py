"""`python -m engine export`: ONNX models that onnxruntime runs to our `Net.forward` outputs.

Every shipped net, a net holding every layer type (from the layers' `examples`), a net of
the awkward cases (clipped pooling windows, padding_end, groups, even windows, every neuron
function, multi-input joins), trained weights from a checkpoint, the metadata, the symbolic
batch dimension, the refused (plugin) types and the CLI's exit codes."""
import glob
import json
import os
import sys

import numpy as np
import pytest
from helpers import example_net

import engine
from engine import ConfigError
from engine.cli import main
from engine.tools import export_onnx
from layers import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = sorted(glob.glob(os.path.join(ROOT, "nets", "*.yaml")))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")
PLUGIN_NET = os.path.join(ROOT, "examples", "plugins", "net.yaml")
HINT = "pip install -e '.[onnx]'"


@pytest.fixture
def ort():
    pytest.importorskip("onnx", reason=f"exporting needs onnx: {HINT}")
    return pytest.importorskip("onnxruntime", reason=f"running the exported models needs onnxruntime: {HINT}")


def session(ort, model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_model(ort, model, x):
    s = session(ort, model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))


def assert_same(ours, theirs, name, rel=2e-6):
    """Equal within float32 rounding: |diff| <= rel * the activation's largest magnitude
    (plus rtol 1e-5); NaN where we give NaN (sqrt of a negative)."""
    assert theirs.shape == ours.shape, name
    finite = ours[np.isfinite(ours)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=rel * max(scale, 1e-30), equal_nan=True,
                               err_msg=name)


def compare_every_layer(ort, net, x, rel=2e-6):
    """Every layer's activation, exported as extra outputs, against Net.forward's."""
    names = [n.name for n in net.layers]
    model = export_onnx.to_onnx(net, outputs=names)
    export_onnx.check(model)
    theirs = run_model(ort, model, x)
    ours = net.forward(x, outputs=names)
    for name in names:
        assert_same(ours[name], theirs[name], f"{net.name}: layer {name} ({net.layer(name).type})", rel)
    np.testing.assert_allclose(theirs[net.output_layer.name], net.forward(x), rtol=1e-5, atol=1e-6)
    return model


def images(net, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + net.input_shape).astype(np.float32)


# ---- every shipped net -------------------------------------------------------------------
SLOW_NETS = {f"{n}.yaml" for n in ("resnet18", "resnet34", "vgg16", "vgg19", "googlenet")}   # 224x224, deep
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in SLOW_NETS else p
                                  for p in NETS], ids=[os.path.basename(p) for p in NETS])
def test_every_shipped_net_runs_in_onnxruntime_as_ours(ort, path):
    net = engine.load(path, seed=0)
    big = net.input_shape[1] > 100              # the 224x224 AlexNets: one image
    x = images(net, 1 if big else 2)
    compare_every_layer(ort, net, x, rel=1e-5 if big else 2e-6)


# ---- every layer type ----------------------------------------------------------------------
@pytest.mark.parametrize("cost", sorted(t for t, cls in registry.REGISTRY.items()
                                        if cls.is_cost and cls.__module__.startswith("layers.")))
def test_a_net_of_every_layer_type_exports_exactly(ort, cost):
    net = engine.load(example_net(cost), seed=2)
    assert {n.type for n in net.layers} >= set(export_onnx.EXPORTERS) - {"softmax", "sum2"}
    compare_every_layer(ort, net, images(net, 2))


def test_every_built_in_type_has_an_exporter():
    builtin = {t for t, cls in registry.REGISTRY.items() if cls.__module__.startswith("layers.")}
    missing = builtin - set(export_onnx.EXPORTERS)
    assert not missing, (f"layer types without an ONNX exporter: {sorted(missing)}: add a function to "
                         "engine/tools/export_onnx.py's EXPORTERS (standard ops, or refuse it there)")


def edge_net():
    """The cases the `examples` miss: pools whose last window is clipped (10 rows, 11 columns),
    stride < size, padding_end with groups and stride on conv and local, even cmrnorm/rnorm/cnorm
    windows, cmrnorm groups, every neuron function, 2- and 3-input joins of every kind."""
    layers = [
        {"name": "c_same", "type": "conv", "filters": 4, "size": 3, "padding": 1, "neuron": "linear[2,0.5]"},
        {"name": "c_pe", "inputs": ["data"], "type": "conv", "filters": 6, "size": 3, "stride": 2,
         "padding": 1, "padding_end": 1, "groups": 3, "neuron": "relu"},
        {"name": "c_two", "inputs": ["data", "c_same"], "type": "conv", "filters": 4, "size": 2,
         "padding_end": 1, "groups": 2, "neuron": "tanh[1.7159,0.6667]"},
        {"name": "loc", "inputs": ["data"], "type": "local", "filters": 4, "size": 3, "stride": 2,
         "padding": 1, "padding_end": 1, "groups": 2, "neuron": "logistic"},
        {"name": "loc2", "inputs": ["c_two"], "type": "local", "filters": 3, "size": 2, "neuron": "brelu[0.5]"},
        {"name": "pmax", "inputs": ["data"], "type": "pool", "mode": "max", "size": 3, "stride": 2},
        {"name": "pavg", "inputs": ["data"], "type": "pool", "mode": "avg", "size": 3, "stride": 2,
         "neuron": "square"},
        {"name": "pavg2", "inputs": ["data"], "type": "pool", "mode": "avg", "size": 2},
        {"name": "pmax4", "inputs": ["data"], "type": "pool", "mode": "max", "size": 4, "stride": 3,
         "neuron": "softrelu"},
        {"name": "pavg1", "inputs": ["c_pe"], "type": "pool", "mode": "avg", "size": 3, "stride": 1},
        {"name": "cmr_even", "inputs": ["data"], "type": "cmrnorm", "size": 4, "alpha": 0.5, "beta": 0.6, "k": 1.0},
        {"name": "cmr_odd_g", "inputs": ["data"], "type": "cmrnorm", "size": 3, "groups": 2, "alpha": 0.3},
        {"name": "cmr_even_g", "inputs": ["data"], "type": "cmrnorm", "size": 2, "groups": 3, "alpha": 0.7},
        {"name": "cmr_all", "inputs": ["data"], "type": "cmrnorm", "size": 6, "alpha": 0.4, "k": 0.5},
        {"name": "rn_even", "inputs": ["data"], "type": "rnorm", "size": 4, "alpha": 0.3, "beta": 0.9},
        {"name": "rn_odd", "inputs": ["data"], "type": "rnorm", "size": 5, "alpha": 1.0, "k": 2.0},
        {"name": "cn_even", "inputs": ["data"], "type": "cnorm", "size": 2, "alpha": 0.5},
        {"name": "cn5", "inputs": ["data"], "type": "cnorm", "size": 5, "alpha": 0.2, "beta": 0.5},
        {"name": "esum", "inputs": ["rn_odd", "cn5", "cmr_even"], "type": "eltsum", "coeffs": [1.0, -0.5, 2.0]},
        {"name": "esum2", "inputs": ["rn_even", "cn_even"], "type": "eltsum", "neuron": "relu"},
        {"name": "emax", "inputs": ["cmr_odd_g", "cmr_even_g", "cmr_all"], "type": "eltmax"},
        {"name": "cat", "inputs": ["pmax", "pavg"], "type": "concat"},
        {"name": "catf", "inputs": ["pavg2", "loc"], "type": "concat", "mode": "flat"},
        {"name": "drop", "inputs": ["cat"], "type": "dropout", "rate": 0.4},
        {"name": "drop2", "inputs": ["drop"], "type": "dropout2", "keep": 0.3},
        {"name": "big", "inputs": ["data"], "type": "neuron", "fn": "linear[40,0]"},
        {"name": "n_softrelu", "inputs": ["big"], "type": "neuron", "fn": "softrelu"},
        {"name": "n_logistic", "inputs": ["big"], "type": "neuron", "fn": "logistic"},
        {"name": "n_tanh", "inputs": ["big"], "type": "neuron", "fn": "tanh"},
    ]
    for i, fn in enumerate(["ident", "linear[-0.5,0.25]", "relu", "brelu[0.7]", "abs", "square"]):
        layers.append({"name": f"n{i}", "inputs": ["data"], "type": "neuron", "fn": fn})
    layers.append({"name": "n_sqrt", "inputs": ["n4"], "type": "neuron", "fn": "sqrt"})
    side = {"name": "side", "inputs": ["drop2", "esum"], "type": "fc", "outputs": 3, "neuron": "abs"}
    read = {i for layer in layers + [side] for i in layer.get("inputs", [])} | {"esum2"}
    ends = [layer["name"] for layer in layers if layer["name"] not in read]
    layers += [side, {"name": "top", "inputs": ends, "type": "fc", "outputs": 7, "init_w": 0.02},
               {"name": "prob", "inputs": ["top", "side", "esum2"], "type": "softmax"}]
    return {"name": "edges", "input": {"shape": [6, 10, 11]}, "defaults": {"init_w": 0.3, "init_b": 0.1},
            "layers": layers}


def test_the_awkward_cases_export_exactly(ort):
    net = engine.load(edge_net(), seed=1)
    assert net.layer("pmax").output_shape == (6, 5, 5) and net.layer("pavg2").output_shape == (6, 5, 6)
    assert net.layer("pmax4").output_shape == (6, 3, 4)
    x = images(net, 2, seed=3)
    model = compare_every_layer(ort, net, x)
    ops = {n.op_type for n in model.graph.node}
    assert {"LRN", "Conv", "Gemm", "MaxPool", "AveragePool", "Concat", "Sum", "Max", "Softmax",
            "MatMul"} <= ops
    assert "Dropout" not in ops


def test_sqrt_of_a_negative_is_nan_both_ways(ort):
    net = engine.load({"name": "roots", "input": {"shape": [2, 3, 4]},
                       "layers": [{"name": "root", "type": "neuron", "fn": "sqrt"}]})
    x = images(net, 2)
    (theirs,) = run_model(ort, export_onnx.to_onnx(net), x).values()
    ours = net.forward(x)
    assert np.isnan(ours).any()
    np.testing.assert_array_equal(np.isnan(theirs), np.isnan(ours))
    assert_same(ours, theirs, "root")


# ---- the file: checks, batch dimension, metadata, trained weights ---------------------------
def test_export_writes_a_checked_model_with_a_symbolic_batch(ort, tmp_path, capsys):
    import onnx
    out = tmp_path / "lenet.onnx"
    assert main(["export", LENET, "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "wrote" in line and "opset 17" in line
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == export_onnx.IR_VERSION
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "N"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["net"] == "lenet5" and props["output"] == "prob" and "seed=0" in props["weights"]
    net = engine.load(LENET, seed=0)
    s = session(ort, model)
    for n in (1, 3):
        x = images(net, n, seed=n)
        (probs,) = s.run(None, {"data": x})
        assert probs.shape == (n, 10)
        np.testing.assert_allclose(probs, net.forward(x), rtol=1e-5, atol=1e-6)
    assert not [f for f in os.listdir(tmp_path) if f != "lenet.onnx"]       # no temporary left


def test_set_changes_the_exported_net(ort, tmp_path, capsys):
    import onnx
    out = tmp_path / "five.onnx"
    assert main(["export", LENET, "--set", "fc5.outputs=5", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 5
    net = engine.load(LENET, seed=0, overrides=["fc5.outputs=5"])
    x = images(net, 2, seed=2)
    np.testing.assert_allclose(session(ort, model).run(None, {"data": x})[0], net.forward(x),
                               rtol=1e-5, atol=1e-6)
    assert main(["export", LENET, "--set", "fc5.outptus=5", "-o", str(out)]) == 2
    assert "--set fc5.outptus=5: unknown key 'outptus'" in capsys.readouterr().err


def test_seed_chooses_the_drawn_weights(ort, tmp_path):
    import onnx
    out = tmp_path / "m.onnx"
    assert main(["export", LENET, "--seed", "5", "-o", str(out)]) == 0
    net = engine.load(LENET, seed=5)
    x = images(net, 2)
    (probs,) = session(ort, onnx.load(str(out))).run(None, {"data": x})
    np.testing.assert_allclose(probs, net.forward(x), rtol=1e-5, atol=1e-6)
    assert np.abs(probs - engine.load(LENET, seed=0).forward(x)).max() > 1e-3


TINY = """
name: tiny-digits
input: {shape: [1, 28, 28]}
layers:
  - {name: conv1, type: conv, filters: 4, size: 5, stride: 2, neuron: relu, init_w: 0.1}
  - {name: pool1, type: pool, mode: max, size: 3, stride: 2}
  - {name: norm1, type: cmrnorm, size: 3, alpha: 0.01}
  - {name: fc2, type: fc, outputs: 10, init_w: 0.1}
  - {name: prob, type: softmax}
train: {data: digits, epochs: 1, batch: 100, lr: 0.05, augment: {}}
"""


def test_a_checkpoints_trained_weights_and_class_names_are_exported(ort, tmp_path, capsys):
    import onnx
    from engine.train import Trainer
    net_file = tmp_path / "tiny.yaml"
    net_file.write_text(TINY)
    run_dir = tmp_path / "run"
    Trainer(str(net_file), epochs=1, out=str(run_dir), log=lambda *a: None).run()
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--checkpoint", str(run_dir), "-o", str(out)]) == 0   # the net from the checkpoint
    capsys.readouterr()
    model = onnx.load(str(out))
    trained = engine.load(None, checkpoint=str(run_dir))
    x = images(trained, 4)
    (probs,) = session(ort, model).run(None, {"data": x})
    np.testing.assert_allclose(probs, trained.forward(x), rtol=1e-5, atol=1e-6)
    assert np.abs(probs - engine.load(str(net_file), seed=0).forward(x)).max() > 1e-3   # not the drawn ones
    props = {p.key: p.value for p in model.metadata_props}
    assert props["net"] == "tiny-digits"
    assert json.loads(props["class_names"]) == [str(i) for i in range(10)]
    assert props["checkpoint_id"] == trained.checkpoint_meta["id"]
    assert float(props["preprocess_scale"]) == trained.preprocess.scale
    # NET.yaml and --checkpoint together: the file's net with the checkpoint's weights
    out2 = tmp_path / "tiny2.onnx"
    assert main(["export", str(net_file), "--checkpoint", str(run_dir), "-o", str(out2)]) == 0
    (probs2,) = session(ort, onnx.load(str(out2))).run(None, {"data": x})
    np.testing.assert_array_equal(probs2, probs)


# ---- refusals and the CLI's errors ---------------------------------------------------------
def test_a_plugin_type_is_refused_naming_layer_and_type(ort, tmp_path, capsys):
    net = engine.load(PLUGIN_NET, plugins=True)
    with pytest.raises(ConfigError) as err:
        export_onnx.to_onnx(net)
    assert err.value.layer == "scale1" and "'scale' layer has no ONNX export" in str(err.value)
    assert "net.yaml:11" in str(err.value)
    out = tmp_path / "p.onnx"
    assert main(["export", PLUGIN_NET, "--plugins", "-o", str(out)]) == 2
    msg = capsys.readouterr().err
    assert msg.count("\n") == 1 and "layer 'scale1'" in msg and "'scale'" in msg
    assert not out.exists() and not os.listdir(tmp_path)
    assert main(["export", PLUGIN_NET, "-o", str(out)]) == 2          # plugins need consent first
    assert "--plugins" in capsys.readouterr().err


def test_cli_errors_exit_2(ort, tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    assert main(["export", "-o", out]) == 2
    assert "give a net file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.yaml"), "-o", out]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninput: {shape: [1, 8, 8]}\nlayers:\n  - {name: c, type: conv, size: 3}\n")
    assert main(["export", str(bad), "-o", out]) == 2
    assert "filters" in capsys.readouterr().err
    assert main(["export", LENET, "--checkpoint", str(tmp_path / "norun"), "-o", out]) == 2
    assert not os.path.exists(out)
    with pytest.raises(SystemExit) as e:                      # -o is required (argparse: exit 2)
        main(["export", LENET])
    assert e.value.code == 2


def test_without_onnx_one_line_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)            # import onnx raises ImportError
    out = tmp_path / "m.onnx"
    assert main(["export", LENET, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HINT in err
    assert not out.exists()


def test_a_failed_write_leaves_the_old_file(ort, tmp_path, monkeypatch, capsys):
    import onnx
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")

    def broken(model, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onnx, "save", broken)
    assert main(["export", LENET, "-o", str(out)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]
