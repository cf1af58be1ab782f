"""Every mistake in a net file is an engine.ConfigError naming the file, line, layer and key."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine
from engine import ConfigError

GOOD = """\
name: tiny
input: {shape: [3, 12, 12]}
layers:
  - name: conv1
    type: conv
    filters: 4
    size: 3
    padding: 1
    neuron: relu
  - name: pool1
    type: pool
    mode: max
    size: 2
  - name: fc1
    type: fc
    outputs: 5
  - name: prob
    type: softmax
"""


def error_for(tmp_path, text):
    path = tmp_path / "net.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        engine.load(str(path))
    err = info.value
    assert err.file == str(path)
    assert str(path) in str(err)
    return err


def replace(old, new, text=GOOD):
    assert old in text
    return text.replace(old, new)


def test_good_net_loads(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(GOOD)
    net = engine.load(str(path))
    assert [n.name for n in net.layers] == ["conv1", "pool1", "fc1", "prob"]
    assert net.layers[1].output_shape == (4, 6, 6)


def test_yaml_syntax_error(tmp_path):
    err = error_for(tmp_path, replace("    size: 3\n", "    size: [3\n"))
    assert "syntax" in err.message.lower()
    assert err.line is not None and 7 <= err.line <= 9


def test_unknown_type_suggests(tmp_path):
    err = error_for(tmp_path, replace("type: pool", "type: pol"))
    assert (err.layer, err.key, err.line) == ("pool1", "type", 11)
    assert "did you mean 'pool'" in err.message


def test_unknown_key_suggests(tmp_path):
    err = error_for(tmp_path, replace("    padding: 1", "    pading: 1"))
    assert (err.layer, err.key, err.line) == ("conv1", "pading", 8)
    assert "did you mean 'padding'" in err.message


def test_missing_required_key(tmp_path):
    err = error_for(tmp_path, replace("    outputs: 5\n", ""))
    assert (err.layer, err.key) == ("fc1", "outputs")
    assert "missing required key" in err.message
    assert err.line == 14  # the layer's own line when the key is absent


def test_wrong_value_type(tmp_path):
    err = error_for(tmp_path, replace("    size: 3\n", "    size: three\n"))
    assert (err.layer, err.key, err.line) == ("conv1", "size", 7)
    assert "integer" in err.message


def test_value_out_of_range(tmp_path):
    err = error_for(tmp_path, replace("    filters: 4", "    filters: 0"))
    assert (err.layer, err.key, err.line) == ("conv1", "filters", 6)
    assert ">= 1" in err.message


def test_bad_choice(tmp_path):
    err = error_for(tmp_path, replace("    neuron: relu", "    neuron: rleu"))
    assert (err.layer, err.key) == ("conv1", "neuron")
    assert "relu" in err.message


def test_unknown_input_layer(tmp_path):
    err = error_for(tmp_path, replace("    outputs: 5\n", "    outputs: 5\n    inputs: [pool2]\n"))
    assert (err.layer, err.key, err.line) == ("fc1", "inputs", 17)
    assert "unknown input layer 'pool2'" in err.message and "pool1" in err.message


def test_duplicate_layer_name(tmp_path):
    err = error_for(tmp_path, replace("  - name: fc1", "  - name: pool1"))
    assert (err.layer, err.key, err.line) == ("pool1", "name", 14)
    assert "duplicate" in err.message and "line 10" in err.message


def test_cycle(tmp_path):
    text = replace("    mode: max\n", "    mode: max\n    inputs: [fc1]\n")
    err = error_for(tmp_path, text)
    assert err.key == "inputs"
    assert "cycle" in err.message and "pool1" in err.message and "fc1" in err.message


def test_unused_layer(tmp_path):
    text = GOOD + "  - name: extra\n    type: neuron\n    fn: relu\n    inputs: [pool1]\n"
    # `extra` is now the last layer, so `prob` is the unused one
    err = error_for(tmp_path, text)
    assert err.layer == "prob" and "unused" in err.message and err.line == 17


def test_groups_must_divide(tmp_path):
    err = error_for(tmp_path, replace("    filters: 4\n", "    filters: 4\n    groups: 2\n"))
    assert (err.layer, err.key) == ("conv1", "groups")
    assert "3" in err.message  # the 3 input channels


def test_filters_must_divide_by_groups(tmp_path):
    text = replace("input: {shape: [3, 12, 12]}", "input: {shape: [4, 12, 12]}")
    text = replace("    filters: 4\n", "    filters: 5\n    groups: 2\n", text)
    err = error_for(tmp_path, text)
    assert (err.layer, err.key) == ("conv1", "groups")
    assert "5" in err.message


def test_kernel_larger_than_padded_input(tmp_path):
    err = error_for(tmp_path, replace("    size: 3\n", "    size: 15\n"))
    assert (err.layer, err.key, err.line) == ("conv1", "size", 7)


def test_pool_window_larger_than_input(tmp_path):
    err = error_for(tmp_path, replace("    size: 2\n", "    size: 13\n"))
    assert (err.layer, err.key, err.line) == ("pool1", "size", 13)


def test_join_with_mismatched_hw(tmp_path):
    text = replace("  - name: fc1\n", "  - name: join\n    type: neuron\n    fn: relu\n"
                   "    inputs: [conv1, pool1]\n  - name: fc1\n")
    err = error_for(tmp_path, text)
    assert (err.layer, err.key) == ("join", "inputs")
    assert "12" in err.message and "6" in err.message


def test_gpu_must_be_0_to_7(tmp_path):
    err = error_for(tmp_path, replace("    mode: max\n", "    mode: max\n    gpu: 8\n"))
    assert (err.layer, err.key, err.line) == ("pool1", "gpu", 13)
    assert err.message == "must be <= 7, got 8"


def test_default_with_unknown_key(tmp_path):
    err = error_for(tmp_path, replace("layers:\n", "defaults: {init_ww: 0.1}\nlayers:\n"))
    assert err.key == "init_ww" and "init_w" in err.message and err.line == 3


def test_bad_default_value_points_at_defaults(tmp_path):
    err = error_for(tmp_path, replace("layers:\n", "defaults:\n  init_w: -1\nlayers:\n"))
    assert (err.layer, err.key, err.line) == ("conv1", "init_w", 4)


def test_unknown_top_level_key(tmp_path):
    err = error_for(tmp_path, replace("layers:\n", "layer:\n  - x\nlayers:\n"))
    assert err.key == "layer" and "did you mean 'layers'" in err.message


def test_bad_input_shape(tmp_path):
    err = error_for(tmp_path, replace("[3, 12, 12]", "[3, 12]"))
    assert err.key == "shape" and err.line == 2


def test_cost_layer_must_be_last(tmp_path):
    text = GOOD + "  - name: after\n    type: neuron\n    fn: relu\n"
    err = error_for(tmp_path, text)
    assert err.layer == "prob" and "cost layer" in err.message


def test_errors_from_dict_and_text_have_no_file():
    with pytest.raises(ConfigError) as info:
        engine.load({"input": {"shape": [1, 4, 4]}, "layers": [{"name": "a", "type": "bogus"}]})
    assert info.value.file is None and info.value.layer == "a"
    with pytest.raises(ConfigError) as info:
        engine.load(GOOD.replace("filters: 4", "filters: -4"))
    assert info.value.line == 6


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        engine.load("does/not/exist.yaml")
    assert "cannot read" in str(info.value)
    with pytest.raises(ConfigError, match="no such net file: 'nets/alexnet'"):
        engine.load("nets/alexnet")


def test_forward_checks_shape_and_dtype():
    net = engine.load(GOOD)
    with pytest.raises(ValueError, match="float32"):
        net.forward(np.zeros((2, 3, 12, 12)))
    with pytest.raises(ValueError, match=r"\[N, 3, 12, 12\]"):
        net.forward(np.zeros((2, 3, 10, 12), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3, 12, 12\]"):
        net.forward(np.zeros((3, 12, 12), np.float32))


def test_cli_prints_error_in_two_lines_and_exits_2(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(replace("type: pool", "type: pol"))
    proc = subprocess.run([sys.executable, "-m", "engine", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert f"{path}:11" in proc.stderr and "pool1" in proc.stderr and "did you mean" in proc.stderr
