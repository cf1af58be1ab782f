"""`blocks:`: named layer templates with parameters, expanded at load time (engine.blocks)."""
import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

import engine
import helpers
from engine.config import parse_net
from engine.tools import draw

RES = """name: tiny-resnet
input: {shape: [3, 8, 8]}
blocks:
  basic:                       # a residual block
    params: {width: null, stride: 1}
    layers:
      - {name: a, type: conv, filters: $width, size: 3, stride: $stride, padding: 1, neuron: relu}
      - {name: b, type: conv, filters: $width, size: 3, padding: 1}
      - {name: sum, type: eltsum, inputs: [b, $in]}
      - {name: relu, type: neuron, fn: relu}
  down:
    params: {width: null}
    layers:
      - {name: a, type: conv, filters: $width, size: 3, stride: 2, padding: 1, neuron: relu}
      - {name: b, type: conv, filters: $width, size: 3, padding: 1}
      - {name: proj, type: conv, filters: $width, size: 1, stride: 2, inputs: $in}
      - {name: sum, type: eltsum, inputs: [b, proj]}
layers:
  - {name: conv1, type: conv, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: res2a, block: basic, width: 4}
  - {name: res2b, block: basic, width: 4}
  - {name: res3a, block: down, width: 6}
  - {name: fc, type: fc, outputs: 5, inputs: res3a}
  - {name: prob, type: softmax}
"""
USE_LINE = {"res2a": 20, "res2b": 21, "res3a": 22}

# the same net spelled out, layer by layer
SPELLED = """name: tiny-resnet
input: {shape: [3, 8, 8]}
layers:
  - {name: conv1, type: conv, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: res2a.a, type: conv, filters: 4, size: 3, stride: 1, padding: 1, neuron: relu}
  - {name: res2a.b, type: conv, filters: 4, size: 3, padding: 1}
  - {name: res2a.sum, type: eltsum, inputs: [res2a.b, conv1]}
  - {name: res2a.relu, type: neuron, fn: relu}
  - {name: res2b.a, type: conv, filters: 4, size: 3, stride: 1, padding: 1, neuron: relu}
  - {name: res2b.b, type: conv, filters: 4, size: 3, padding: 1}
  - {name: res2b.sum, type: eltsum, inputs: [res2b.b, res2a.relu]}
  - {name: res2b.relu, type: neuron, fn: relu}
  - {name: res3a.a, type: conv, filters: 6, size: 3, stride: 2, padding: 1, neuron: relu}
  - {name: res3a.b, type: conv, filters: 6, size: 3, padding: 1}
  - {name: res3a.proj, type: conv, filters: 6, size: 1, stride: 2, inputs: res2b.relu}
  - {name: res3a.sum, type: eltsum, inputs: [res3a.b, res3a.proj]}
  - {name: fc, type: fc, outputs: 5, inputs: res3a.sum}
  - {name: prob, type: softmax}
"""
X = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
Y = np.array([0, 1, 2, 4])


def error(text, overrides=None, path=None):
    source = text
    if path is not None:
        path.write_text(text)
        source = str(path)
    with pytest.raises(engine.ConfigError) as e:
        engine.load(source, overrides=overrides)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return e.value


def test_expansion_names_wiring_and_parameters():
    spec = parse_net(RES)
    by = {s.name: s for s in spec.layers}
    assert [s.name for s in spec.layers] == [
        "conv1", "res2a.a", "res2a.b", "res2a.sum", "res2a.relu", "res2b.a", "res2b.b", "res2b.sum",
        "res2b.relu", "res3a.a", "res3a.b", "res3a.proj", "res3a.sum", "fc", "prob"]
    assert by["res2a.a"].inputs == ["conv1"] and by["res2a.b"].inputs == ["res2a.a"]
    assert by["res2a.sum"].inputs == ["res2a.b", "conv1"]          # $in: the use's input
    assert by["res2b.a"].inputs == ["res2a.relu"]                  # the previous block's output
    assert by["res3a.proj"].inputs == ["res2b.relu"]
    assert by["fc"].inputs == ["res3a.sum"]                        # naming a use means its last layer
    assert by["res2a.a"].cfg["filters"] == 4 and by["res2a.a"].cfg["stride"] == 1   # a default
    assert by["res3a.a"].cfg["filters"] == 6


def test_a_block_net_computes_what_the_spelled_out_net_computes():
    ours, spelled = engine.load(RES, seed=4), engine.load(SPELLED, seed=4)
    assert list(ours.state_dict()) == list(spelled.state_dict())
    for k, v in spelled.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k], v)
    np.testing.assert_array_equal(ours.forward(X), spelled.forward(X))
    (l1, g1), (l2, g2) = ours.gradients(X, Y), spelled.gradients(X, Y)
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g2)


def test_several_inputs_gpu_and_outside_layers_through_parameters():
    text = """input: {shape: [2, 6, 6]}
blocks:
  mix:
    params: {other: null, k: 1}
    layers:
      - {name: j, type: concat}
      - {name: c, type: conv, filters: 2, size: $k}
      - {name: s, type: eltsum, inputs: [c, $other]}
layers:
  - {name: a, type: conv, filters: 1, size: 1}
  - {name: b, type: conv, filters: 2, size: 1, inputs: data, gpu: 1}
  - {name: m, block: mix, inputs: [a, b], other: b, gpu: 1}
  - {name: out, type: sum2}
"""
    net = engine.load(text)
    by = {n.name: n for n in net.layers}
    assert by["m.j"].inputs == ["a", "b"] and by["m.s"].inputs == ["m.c", "b"]
    assert {by[n].gpu for n in ("m.j", "m.c", "m.s")} == {1} and by["out"].inputs == ["m.s"]
    assert by["m.j"].output_shape == (3, 6, 6)


def test_set_overrides_reach_expanded_layers_and_block_parameters():
    net = engine.load(RES, overrides=["res2a.a.neuron=tanh", "res3a.width=8"])
    by = {n.name: n for n in net.layers}
    assert by["res2a.a"].layer.cfg["neuron"] == "tanh" and by["res2b.a"].layer.cfg["neuron"] == "relu"
    assert by["res3a.sum"].output_shape == (8, 4, 4)
    e = error(RES, ["res2a.a.filtrs=3"])
    assert "--set res2a.a.filtrs=3" in str(e) and "did you mean 'filters'" in str(e)
    e = error(RES, ["res2a.widht=3"])
    assert "--set res2a.widht=3" in str(e) and "did you mean 'width'" in str(e)
    e = error(RES, ["res2a.width=abc"])
    assert "--set res2a.width=abc" in str(e) and "in block 'basic' used at line 20" in str(e)


def test_checkpoints_save_the_net_text_and_expand_it_again(tmp_path):
    from engine.train import Trainer
    net_file = tmp_path / "res.yaml"
    net_file.write_text(RES)
    Trainer(str(net_file), data="synthetic:32", epochs=1, batch=16, lr=0.01, out=str(tmp_path / "run"),
            overrides=["res2b.width=4"], log=lambda *_: None).run()
    trained = engine.load(str(tmp_path / "run"))
    assert [n.name for n in trained.layers] == [n.name for n in engine.load(RES).layers]
    again = engine.load(RES)
    again.load_state_dict(trained.state_dict())
    np.testing.assert_array_equal(again.forward(X), trained.forward(X))


def test_a_resnet_of_blocks_trains_a_step():
    from engine.solver import SGD
    net = engine.load(RES, seed=1)
    sgd = SGD.for_net(net, momentum=0.9)
    before = net.loss(X, Y)
    for _ in range(3):
        _, grads = net.loss_and_grads(X, Y)
        sgd.step(grads, lr=0.05)
    assert net.loss(X, Y) < before


def test_gradients_through_blocks_against_finite_differences():
    net = engine.load(RES.replace("neuron: relu", "neuron: tanh").replace("fn: relu", "fn: tanh"), seed=2)
    helpers.check_net_gradients(net, X, Y, ["res2a.a.weight", "res2b.b.bias", "res3a.proj.weight"],
                                h=1e-2, samples=4, rel=3e-2, abs=2e-4)


def test_summary_and_draw_group_by_block(tmp_path):
    text = engine.load(RES).summary()
    assert "res2a.sum" in text and "res3a.proj" in text
    lay = draw.layout(draw.structure(RES))
    assert sorted(g[0] for g in lay.groups) == ["res2a (basic)", "res2b (basic)", "res3a (down)"]
    for label, x, y, w, h in lay.groups:
        use = label.split()[0]
        for b in lay.boxes.values():
            if b.name.startswith(use + "."):
                assert x <= b.x and b.x + b.w <= x + w and y <= b.y and b.y + b.h <= y + h
    dot = draw.to_dot(draw.structure(RES))
    assert 'subgraph "cluster_res2a_gpu0"' in dot and 'label="res2a (basic)"' in dot
    assert "res2a (basic)" in draw.to_svg(lay)


def test_the_summary_of_googlenet_stays_legible():
    """A concat of four inception branches would make the inputs column 100 characters wide:
    long input lists continue on lines of their own, every name whole and in order."""
    net = engine.load(Path(__file__).parent.parent / "nets" / "googlenet.yaml")
    lines = net.summary().splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    start = next(i for i, line in enumerate(lines) if line.startswith("inception3a.out "))
    cells = [lines[start].split()[3]] + [line.strip() for line in lines[start + 1:start + 4]]
    assert "".join(cells).split(",") == net.layer("inception3a.out").inputs
    assert lines[start + 4].startswith("inception3b.")

# ---- errors: one line, the template's line and the use's -------------------------------------
def edit(old, new, text=RES):
    assert old in text, old
    return text.replace(old, new, 1)


TEMPLATE_ERRORS = [   # (edit, words, line of the template, layer)
    (("filters: $width, size: 3, stride", "filters: $width, size: 0, stride"), "key 'size'", 7, "res2a.a"),
    (("type: eltsum, inputs: [b, $in]", "type: eltsun, inputs: [b, $in]"), "did you mean 'eltsum'", 9, "res2a.sum"),
    (("{name: relu, type: neuron, fn: relu}", "{name: relu, type: neuron, fn: rleu}"), "fn", 10, "res2a.relu"),
    (("{name: relu, type: neuron, fn: relu}", "{name: relu, type: neuron, fn: relu, size: 2}"), "unknown key",
     10, "res2a.relu"),
    (("{name: proj, type: conv, filters: $width, size: 1", "{name: proj, type: conv, filters: $width, size: 9"),
     "larger than", 16, "res3a.proj"),
]


@pytest.mark.parametrize("change, words, line, layer", TEMPLATE_ERRORS)
def test_errors_in_a_template_name_its_line_and_the_use(tmp_path, change, words, line, layer):
    e = error(edit(*change), path=tmp_path / "net.yaml")
    use = layer.split(".")[0]
    assert words in str(e) and e.line == line and e.layer == layer
    assert e.block in ("basic", "down") and e.used_at == USE_LINE[use]
    assert str(e).startswith(f"{tmp_path / 'net.yaml'}:{line} (in block '{e.block}' used at line {USE_LINE[use]}): ")


USE_ERRORS = [   # (edit, words, line)
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic}"), "needs parameter 'width'", 20),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basci, width: 4}"), "did you mean 'basic'", 20),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, widht: 4}"), "did you mean 'width'", 20),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, width: 4, stride: s}"),
     "takes a number like its default 1", 20),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, width: 4, type: conv}"),
     "a block use takes name, block, inputs, gpu", 20),
    (("{name: res2b, block: basic, width: 4}", "{name: res2a, block: basic, width: 4}"), "duplicate", 21),
    (("{name: res2b, block: basic, width: 4}", "{name: conv1, block: basic, width: 4}"), "duplicate", 21),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, width: 4, inputs: [nope]}"),
     "unknown input layer 'nope'", 7),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, width: 4, inputs: 3}"),
     "must be a layer name", 20),
    (("{name: res2a, block: basic, width: 4}", "{name: res2a, block: basic, width: 4.5}"), "must be an integer", 7),
    (("{name: res2a, block: basic, width: 4}", "{name: data, block: basic, width: 4}"), "input layer's name", 20),
]


@pytest.mark.parametrize("change, words, line", USE_ERRORS)
def test_errors_in_a_use_name_its_line(tmp_path, change, words, line):
    e = error(edit(*change), path=tmp_path / "net.yaml")
    assert words in str(e) and e.line == line, str(e)
    if line < 18:         # found in the template's layer: the use's line too
        assert e.used_at == 20 and "used at line 20" in str(e)


DEFINITION_ERRORS = [   # (edit, words, line)
    (("filters: $width, size: 3, stride", "filters: $widht, size: 3, stride"), "did you mean '$width'", 7),
    (("type: eltsum, inputs: [b, $in]", "type: eltsum, inputs: [c, $in]"), "block 'basic' has no layer 'c'", 9),
    (("params: {width: null, stride: 1}", "params: {width: null, in: 1}"), "plain identifier", 5),
    (("params: {width: null, stride: 1}", "params: [width]"), "mapping of names", 5),
    (("    layers:\n      - {name: a, type: conv, filters: $width, size: 3, stride: $stride",
      "    layer:\n      - {name: a, type: conv, filters: $width, size: 3, stride: $stride"), "did you mean 'layers'", 6),
    (("{name: b, type: conv, filters: $width, size: 3, padding: 1}\n      - {name: sum",
      "{name: a, type: conv, filters: $width, size: 3, padding: 1}\n      - {name: sum"), "duplicate", 8),
    (("{name: relu, type: neuron, fn: relu}", "{name: relu, block: down, width: 2}"), "cannot use a block", 10),
    (("{name: relu, type: neuron, fn: relu}", "{name: $width, type: neuron, fn: relu}"), "no $parameter", 10),
    (("{name: relu, type: neuron, fn: relu}", "{name: relu, type: neuron, fn: $in}"), "only `inputs`", 10),
    (("blocks:\n  basic:", "blocks:\n  basic-1:"), "plain identifier", 4),
]


@pytest.mark.parametrize("change, words, line", DEFINITION_ERRORS)
def test_errors_in_a_definition_name_its_line(tmp_path, change, words, line):
    e = error(edit(*change), path=tmp_path / "net.yaml")
    assert words in str(e) and e.line == line, str(e)


def test_a_use_without_a_blocks_section():
    e = error(SPELLED.replace("  - {name: fc, type: fc", "  - {name: r, block: basic}\n  - {name: fc, type: fc"))
    assert "the net has no `blocks:` section" in str(e) and e.line


def test_unused_blocks_are_checked_and_harmless():
    assert len(engine.load(edit("layers:\n  - {name: conv1", "layers:\n  - {name: conv1", SPELLED.replace(
        "layers:\n", RES[RES.index("blocks:"):RES.index("layers:\n  - {name: conv1")] + "layers:\n", 1))).layers) == 15


# ---- fuzz: bad block use never gives a traceback ---------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WEIRD = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=6),
                  st.sampled_from(["$width", "$in", "$nope", "$", "a", "b", "sum", "res2a", "data", "basic"]),
                  st.lists(st.sampled_from(["$in", "a", "b", "conv1", "res2a", "$width", 3]), max_size=3),
                  st.dictionaries(st.sampled_from(["width", "stride", "x"]), st.integers(0, 3), max_size=2))


def _places(net):
    """Every (container, key) of the block definitions and the uses, for a mutation."""
    out = [(net, "blocks")]
    for bname, block in net["blocks"].items():
        out.append((net["blocks"], bname))
        for k in block:
            out.append((block, k))
        for p in block.get("params") or {}:
            out.append((block["params"], p))
        for layer in block["layers"]:
            out += [(layer, k) for k in layer]
    for layer in net["layers"]:
        if "block" in layer:
            out += [(layer, k) for k in layer]
    return out


@settings(max_examples=150 if helpers.FULL else 40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_bad_block_use_is_a_one_line_config_error(data):
    net = copy.deepcopy(yaml.safe_load(RES))
    for _ in range(data.draw(st.integers(1, 3))):
        places = _places(net)
        container, key = places[data.draw(st.integers(0, len(places) - 1))]
        how = data.draw(st.sampled_from(["set", "delete", "add"]))
        if how == "set":
            container[key] = data.draw(WEIRD)
        elif how == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[data.draw(st.sampled_from(["width", "stride", "in", "block", "inputs", "gpu", "zz"]))] = \
                data.draw(WEIRD)
        if not isinstance(net.get("blocks"), dict) or not all(
                isinstance(b, dict) and isinstance(b.get("params") or {}, dict) and isinstance(b.get("layers"), list)
                and all(isinstance(t, dict) for t in b["layers"]) for b in net["blocks"].values()):
            break                 # _places walks well-formed definitions only
    text = yaml.safe_dump(net, sort_keys=False)
    for source in (net, text):
        try:
            loaded = engine.load(source)
        except engine.ConfigError as e:
            msg = str(e)
            assert msg and "\n" not in msg and len(msg) < 1000, msg
            if source is text and e.layer:
                assert e.line, msg
            continue
        except engine.MemoryLimitError:
            continue
        assert loaded.forward(X[:1]).shape[0] == 1      # a net that loads runs
