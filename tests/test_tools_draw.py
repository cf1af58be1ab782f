"""`python -m engine draw`: SVG, PNG and DOT drawings of a net, two columns side by side."""
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import engine
from engine.cli import main
from engine.tools import draw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALEXNET = os.path.join(ROOT, "nets", "alexnet.yaml")
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")
SVG = "{http://www.w3.org/2000/svg}"


def edges_of(net):
    gpu = {n.name: n.gpu for n in net.layers}
    all_edges = [(i, n.name) for n in net.layers for i in n.inputs]
    cross = [(i, o) for i, o in all_edges if i in gpu and gpu[i] != gpu[o]]
    return all_edges, cross


def test_structure_is_the_nets():
    net, light = engine.load(LENET), draw.structure(LENET)
    assert (light.name, light.input_shape, light.num_params) == (net.name, net.input_shape, net.num_params)
    assert [n.name for n in light.layers] == [n.name for n in net.layers]


def test_svg_has_a_box_per_layer_and_an_arrow_per_input(tmp_path):
    out = tmp_path / "alexnet.svg"
    assert main(["draw", ALEXNET, "-o", str(out)]) == 0
    root = ET.parse(out).getroot()           # well-formed XML
    net = draw.structure(ALEXNET)
    titles = [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g")]
    assert titles == ["data"] + [n.name for n in net.layers]
    all_edges, cross = edges_of(net)
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == len(all_edges)
    assert len(cross) == 7                  # conv3, fc6, fc7 (two each) and fc8 read the other column
    assert sum(ln.get("stroke") == draw.CROSS for ln in lines) == len(cross)
    text = out.read_text()
    assert "fc8 (fc)" in text and "out 48x55x55" in text and "4,097,000 params" in text
    assert "column 1 (gpu: 1)" in text


def test_the_columns_stand_side_by_side():
    net = draw.structure(ALEXNET)
    lay = draw.layout(net)
    b = lay.boxes
    assert b["conv1a"].y == b["conv1b"].y and b["conv1a"].x + b["conv1a"].w < b["conv1b"].x
    assert b["conv3a"].y == b["conv3b"].y > b["pool2a"].y
    assert all(b[n.name].x < b["conv1b"].x for n in net.layers if n.gpu == 0)
    for box in b.values():                   # every box inside the picture
        assert 0 <= box.x and box.x + box.w <= lay.width and 0 <= box.y and box.y + box.h <= lay.height


def test_png_renders_the_same_layout(tmp_path):
    out = tmp_path / "alexnet.png"
    assert main(["draw", ALEXNET, "-o", str(out)]) == 0
    lay = draw.layout(draw.structure(ALEXNET))
    with Image.open(out) as im:
        assert im.size == (round(lay.width * 1.5), round(lay.height * 1.5))
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert px.std() > 20                                            # not blank
    red = tuple(int(draw.CROSS[i:i + 2], 16) for i in (1, 3, 5))
    assert np.any(np.all(px == red, axis=1))                        # cross-column arrows drawn
    blue = tuple(int(draw.FILL[0][i:i + 2], 16) for i in (1, 3, 5))
    assert np.any(np.all(px == blue, axis=1))                       # column 0's boxes filled


def test_dot_has_both_columns_and_every_edge(tmp_path):
    out = tmp_path / "alexnet.dot"
    assert main(["draw", ALEXNET, "-o", str(out)]) == 0
    text = out.read_text()
    net = draw.structure(ALEXNET)
    all_edges, cross = edges_of(net)
    assert text.startswith('digraph "alexnet" {') and text.rstrip().endswith("}")
    assert "subgraph cluster_gpu0" in text and "subgraph cluster_gpu1" in text
    assert text.count(" -> ") == len(all_edges)
    assert text.count(f'color="{draw.CROSS}"') == len(cross)
    assert '"conv1a" [label="conv1a (conv)\\nfilters=48 size=11 stride=4 padding=2 neuron=relu\\n' in text


def test_a_one_column_net_has_no_column_headers(tmp_path):
    lay = draw.layout(draw.structure(LENET))
    assert lay.columns == []
    xs = {b.x for b in lay.boxes.values()}
    assert len(xs) == 1                      # a single column, the input centred above it


def test_unknown_format_and_bad_net_exit_2(tmp_path, capsys):
    assert main(["draw", LENET, "-o", str(tmp_path / "net.jpg")]) == 2
    assert ".svg, .png or .dot" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {shape: [1, 8, 8]}\nlayers:\n  - {name: c, type: cnov}\n")
    assert main(["draw", str(bad), "-o", str(tmp_path / "x.svg")]) == 2
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize("ext", ["svg", "png", "dot"])
def test_written_atomically(tmp_path, ext):
    out = tmp_path / f"net.{ext}"
    out.write_text("old")
    assert main(["draw", LENET, "-o", str(out)]) == 0
    assert out.read_bytes() != b"old"
    assert sorted(os.listdir(tmp_path)) == [f"net.{ext}"]     # no temporary left behind
