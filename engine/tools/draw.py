"""`python -m engine draw NET.yaml -o net.svg|png|dot`: the net's graph, columns side by side.

Each layer is a box (name and type; the keys it sets; output shape and parameter count),
in the column of its `gpu`, one row per step of depth from the input; an arrow runs from
each input to its reader, in red where it crosses from one column to the other. SVG and
PNG share one layout (written by hand: no Graphviz needed); the DOT text is for Graphviz
users who want its own layout (`dot -Tpdf net.dot`).
"""
import html
import os
from dataclasses import dataclass, field

import numpy as np

from engine.config import INPUT_NAME

CHAR_W, LINE_H, PAD = 7.2, 16, 8       # SVG monospace 12 px: ~0.6 em per character
ROW_GAP, COL_GAP, BOX_GAP, MARGIN, HEADER = 34, 70, 14, 20, 56
CROSS, SAME = "#c62828", "#555555"
FILL = {0: "#e8f0fb", 1: "#fdf1e3", None: "#eeeeee"}


@dataclass
class Box:
    name: str
    lines: list
    column: object            # 0, 1, or None for the input
    rank: int
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0


@dataclass
class Layout:
    title: str
    boxes: dict
    edges: list = field(default_factory=list)     # (points, crosses columns)
    groups: list = field(default_factory=list)    # (label, x, y, w, h): a block use's layers
    columns: list = field(default_factory=list)   # (label, x centre)
    width: float = 0.0
    height: float = 0.0


@dataclass
class Structure:
    """What a drawing needs of a net (a Net has the same attributes): no parameters allocated."""
    name: str
    input_shape: tuple
    layers: list
    num_params: int


def structure(source, plugins=False, overrides=None):
    """A net file's checked graph without its 61M weights (drawing AlexNet needs no memory).
    `plugins`: allow the net's plugin layer types (engine.plugins); `overrides`: `--set` values."""
    from engine import graph
    from engine.config import parse_net
    spec = parse_net(source, plugins=plugins, overrides=overrides)
    nodes = graph.build(spec)
    count = sum(int(np.prod(s)) for n in nodes for s in n.layer.param_shapes().values())
    return Structure(spec.name, tuple(spec.input_shape), nodes, count)


def _keys_text(node):
    """The keys a layer sets away from their defaults, shortest form (init keys left out);
    a cost head's weight in the loss too (coeff)."""
    layer, parts = node.layer, []
    for k, spec in type(layer).keys.items():
        v = layer.cfg.get(k)
        if k.startswith("init") or v is None or v == spec.default:
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    weight = getattr(node, "cost_weight", 1.0)
    if layer.is_cost and weight != 1.0:
        parts.append(f"coeff={weight:g}")
    return " ".join(parts)


def _shape(shape):
    return "x".join(str(int(s)) for s in shape)


def box_lines(node):
    n_params = sum(int(np.prod(s)) for s in node.layer.param_shapes().values())
    lines = [f"{node.name} ({node.type})"]
    keys = _keys_text(node)
    if keys:
        lines.append(keys)
    lines.append(f"out {_shape(node.output_shape)}" + (f"  {n_params:,} params" if n_params else ""))
    return lines


def layout(net):
    """Place every box of a Net or Structure: rows by depth from the input, columns by `gpu`."""
    nodes = net.layers
    columns = sorted({n.gpu for n in nodes})
    rank = {INPUT_NAME: 0}
    for n in nodes:
        rank[n.name] = 1 + max(rank[i] for i in n.inputs)
    boxes = {INPUT_NAME: Box(INPUT_NAME, [f"{INPUT_NAME} (input)", f"out {_shape(net.input_shape)}"], None, 0)}
    for n in nodes:
        boxes[n.name] = Box(n.name, box_lines(n), n.gpu, rank[n.name])
    for b in boxes.values():
        b.w = max(len(t) for t in b.lines) * CHAR_W + 2 * PAD
        b.h = len(b.lines) * LINE_H + 2 * PAD - 4
    width = max(b.w for b in boxes.values())
    for b in boxes.values():
        b.w = width
    slots = {}                                  # (rank, column) -> boxes in file order
    for b in boxes.values():
        if b.column is not None:
            slots.setdefault((b.rank, b.column), []).append(b)
    per_col = {c: max(len(v) for (r, cc), v in slots.items() if cc == c) for c in columns}
    col_x, x = {}, MARGIN
    for c in columns:
        col_x[c] = x
        x += per_col[c] * (width + BOX_GAP) - BOX_GAP + COL_GAP
    content_w = x - COL_GAP + MARGIN
    total_w = content_w + COL_GAP / 3      # room on the right for the lines that round boxes
    n_ranks = max(b.rank for b in boxes.values()) + 1
    row_h = [max([b.h for b in boxes.values() if b.rank == r] or [0]) for r in range(n_ranks)]
    row_y, y = [], MARGIN + HEADER
    for h in row_h:
        row_y.append(y)
        y += h + ROW_GAP
    for (r, c), members in slots.items():
        for i, b in enumerate(members):
            b.x, b.y = col_x[c] + i * (width + BOX_GAP), row_y[r]
    data = boxes[INPUT_NAME]
    data.x, data.y = (content_w - width) / 2, row_y[0]
    lay = Layout(title=f"{net.name}: {len(nodes)} layers, {net.num_params:,} parameters",
                 boxes=boxes, width=total_w, height=y - ROW_GAP + MARGIN)
    if len(columns) > 1:
        lay.columns = [(f"column {c} (gpu: {c})", col_x[c] + (per_col[c] * (width + BOX_GAP) - BOX_GAP) / 2)
                       for c in columns]
    lay.groups = _groups(nodes, boxes)
    right_edge = {c: col_x[c] + per_col[c] * (width + BOX_GAP) - BOX_GAP for c in columns}
    for n in nodes:
        dst = boxes[n.name]
        for i in n.inputs:
            src = boxes[i]
            start, end = (src.x + src.w / 2, src.y + src.h), (dst.x + dst.w / 2, dst.y)
            crosses = src.column is not None and src.column != dst.column
            if dst.rank - src.rank > 1 and not crosses:     # round the boxes in between
                side = right_edge.get(dst.column, dst.x + dst.w) + COL_GAP / 3
                pts = [start, (start[0], start[1] + ROW_GAP / 2), (side, start[1] + ROW_GAP / 2),
                       (side, end[1] - ROW_GAP / 2), (end[0], end[1] - ROW_GAP / 2), end]
            else:
                pts = [start, end]
            lay.edges.append((pts, crosses))
    return lay


def _uses(nodes):
    """{(use name, block name): [node names]} of the layers expanded from blocks, in order."""
    uses = {}
    for n in nodes:
        use = getattr(n, "block_use", None)
        if use is not None:
            uses.setdefault(use, []).append(n.name)
    return uses


def _groups(nodes, boxes):
    """A dashed frame around each block use's boxes, labelled "res2a (basic)"."""
    out = []
    for (use, block), names in _uses(nodes).items():
        members = [boxes[name] for name in names]
        x0, y0 = min(b.x for b in members) - 5, min(b.y for b in members) - 5
        x1, y1 = max(b.x + b.w for b in members) + 5, max(b.y + b.h for b in members) + 5
        out.append((f"{use} ({block})", x0, y0, x1 - x0, y1 - y0))
    return out


# ---- writers ----------------------------------------------------------------------------
def to_svg(lay):
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height:.0f}" '
           f'viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
           'monospace" font-size="12">',
           "<defs>"]
    for name, colour in (("same", SAME), ("cross", CROSS)):
        out.append(f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
                   f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>')
    out.append("</defs>")
    out.append('<rect width="100%" height="100%" fill="white"/>')
    out.append(f'<text x="{MARGIN}" y="{MARGIN + 14}" font-size="15" font-weight="bold">{esc(lay.title)}</text>')
    for label, cx in lay.columns:
        out.append(f'<text x="{cx:.1f}" y="{MARGIN + 42}" text-anchor="middle" fill="#444">{esc(label)}</text>')
    for label, x, y, w, h in lay.groups:
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" fill="none" '
                   f'stroke="#888" stroke-dasharray="5,4"/><text x="{x + w:.1f}" y="{y - 3:.1f}" '
                   f'text-anchor="end" fill="#666" font-size="11">{esc(label)}</text>')
    for pts, crosses in lay.edges:
        colour, marker = (CROSS, "cross") if crosses else (SAME, "same")
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.4" '
                   f'marker-end="url(#{marker})"/>')
    for b in lay.boxes.values():
        out.append(f'<g><title>{esc(b.name)}</title><rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" '
                   f'height="{b.h:.1f}" rx="4" fill="{FILL.get(b.column, FILL[None])}" stroke="#666"/>')
        for i, t in enumerate(b.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(f'<text x="{b.x + PAD:.1f}" y="{b.y + PAD + 10 + i * LINE_H:.1f}"{weight}>{esc(t)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(lay, scale=1.5):
    """The SVG layout rendered with Pillow (`scale` times larger, for sharper text)."""
    from PIL import Image, ImageDraw

    from engine.tools import canvas

    def s(v):
        return v * scale
    img = Image.new("RGB", (round(s(lay.width)), round(s(lay.height))), "white")
    d = ImageDraw.Draw(img)
    fnt, bold = canvas.font(round(12 * scale)), canvas.font(round(15 * scale))
    d.text((s(MARGIN), s(MARGIN)), lay.title, fill=canvas.INK, font=bold)
    for label, cx in lay.columns:
        w, _ = canvas.text_size(d, label, fnt)
        d.text((s(cx) - w / 2, s(MARGIN + 30)), label, fill=(68, 68, 68), font=fnt)
    for label, x, y, w, h in lay.groups:
        d.rounded_rectangle([s(x), s(y), s(x + w), s(y + h)], radius=round(6 * scale), outline=(136, 136, 136))
        tw, th = canvas.text_size(d, label, fnt)
        d.text((s(x + w) - tw, s(y) - th - 3), label, fill=(102, 102, 102), font=fnt)
    for pts, crosses in lay.edges:
        colour = CROSS if crosses else SAME
        line = [(s(x), s(y)) for x, y in pts]
        d.line(line, fill=colour, width=max(1, round(1.4 * scale)))
        (x0, y0), (x1, y1) = line[-2], line[-1]
        length = max(np.hypot(x1 - x0, y1 - y0), 1e-9)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        head = 8 * scale
        d.polygon([(x1, y1), (x1 - head * ux + head * 0.45 * uy, y1 - head * uy - head * 0.45 * ux),
                   (x1 - head * ux - head * 0.45 * uy, y1 - head * uy + head * 0.45 * ux)], fill=colour)
    for b in lay.boxes.values():
        d.rounded_rectangle([s(b.x), s(b.y), s(b.x + b.w), s(b.y + b.h)], radius=round(4 * scale),
                            fill=FILL.get(b.column, FILL[None]), outline=(102, 102, 102))
        for i, t in enumerate(b.lines):
            d.text((s(b.x + PAD), s(b.y + PAD - 1 + i * LINE_H)), t, fill=canvas.INK, font=fnt)
    return img


def _dot_quote(*lines):
    """A DOT string of one or more lines (DOT's own \\n between them)."""
    return '"' + "\\n".join(t.replace("\\", "\\\\").replace('"', '\\"') for t in lines) + '"'


def to_dot(net):
    q = _dot_quote
    out = [f"digraph {q(net.name)} {{", "  rankdir=TB;",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
           f'  {q(INPUT_NAME)} [label={q(INPUT_NAME + " (input)", "out " + _shape(net.input_shape))}, '
           'fillcolor="#eeeeee"];']
    by_col = {}
    for n in net.layers:
        by_col.setdefault(n.gpu, []).append(n)
    for c, members in sorted(by_col.items()):
        out.append(f"  subgraph cluster_gpu{c} {{")
        out.append(f'    label="column {c} (gpu: {c})"; color="#999999";')
        uses = _uses(members)
        in_use = {name for names in uses.values() for name in names}
        for (use, block), names in uses.items():      # a block use: a cluster of its own
            out.append(f"    subgraph {q(f'cluster_{use}_gpu{c}')} {{")
            out.append(f'      label={q(f"{use} ({block})")}; style=dashed; color="#888888";')
            for n in members:
                if n.name in names:
                    out.append(f"      {q(n.name)} [label={q(*box_lines(n))}, "
                               f"fillcolor={q(FILL.get(c, FILL[None]))}];")
            out.append("    }")
        for n in members:
            if n.name not in in_use:
                out.append(f"    {q(n.name)} [label={q(*box_lines(n))}, fillcolor={q(FILL.get(c, FILL[None]))}];")
        out.append("  }")
    gpu = {n.name: n.gpu for n in net.layers}
    for n in net.layers:
        for i in n.inputs:
            cross = i != INPUT_NAME and gpu[i] != n.gpu
            out.append(f"  {q(i)} -> {q(n.name)}" + (f' [color="{CROSS}", penwidth=1.6];' if cross else ";"))
    out.append("}")
    return "\n".join(out) + "\n"


FORMATS = (".svg", ".png", ".dot")


def run(net_path, out, log=print, plugins=False, overrides=None):
    """Write the net's drawing; the format comes from the extension of `out`."""
    from engine.checkpoint import write_text
    from engine.errors import ConfigError
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"cannot tell the format of {out!r}: end the name with .svg, .png or .dot")
    net = structure(net_path, plugins=plugins, overrides=overrides)
    if ext == ".dot":
        write_text(out, to_dot(net))
    elif ext == ".svg":
        write_text(out, to_svg(layout(net)))
    else:
        from engine.tools.canvas import save_png
        save_png(to_png(layout(net)), out)
    log(f"wrote {out}")
    return out
