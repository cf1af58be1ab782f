"""Pillow helpers shared by `show` and `draw`: fonts, image grids, plain charts, saving."""
import math

import numpy as np

from engine.checkpoint import atomic_path

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)
MUTED = (110, 110, 110)
GOOD = (34, 139, 34)
BAD = (200, 40, 40)
SERIES = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def font(size=13):
    """Pillow's scalable default font (Pillow >= 10.1 with FreeType); its fixed bitmap font otherwise."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


def text_size(draw, text, fnt):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def save_png(image, path):
    """Write a PIL image as PNG atomically; returns the path."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


def to_uint8(images, lo=None, hi=None):
    """Float arrays to uint8 over [lo, hi] (default: their own min and max)."""
    images = np.asarray(images, np.float64)
    lo = images.min() if lo is None else lo
    hi = images.max() if hi is None else hi
    scaled = (images - lo) / (hi - lo) if hi > lo else np.zeros_like(images) + 0.5
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def tile_grid(tiles, cols, zoom=1, pad=2, background=(64, 64, 64)):
    """A PIL image of uint8 tiles [N, h, w] (grey) or [N, h, w, 3] in a grid of `cols`,
    each enlarged `zoom` times with nearest-neighbour pixels, `pad` pixels apart."""
    from PIL import Image
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    th, tw = h * zoom, w * zoom
    grid = Image.new("RGB", (pad + cols * (tw + pad), pad + rows * (th + pad)), background)
    for i in range(n):
        tile = np.repeat(np.repeat(tiles[i], zoom, axis=0), zoom, axis=1)
        im = Image.fromarray(tile, "L" if tile.ndim == 2 else "RGB").convert("RGB")
        r, c = divmod(i, cols)
        grid.paste(im, (pad + c * (tw + pad), pad + r * (th + pad)))
    return grid


def with_title(image, lines, size=14):
    """`image` below a white band holding one or more lines of text."""
    from PIL import Image, ImageDraw
    fnt = font(size)
    probe = ImageDraw.Draw(image)
    line_h = size + 6
    width = max([image.width] + [text_size(probe, t, fnt)[0] + 16 for t in lines])
    out = Image.new("RGB", (width, image.height + line_h * len(lines) + 10), BACKGROUND)
    d = ImageDraw.Draw(out)
    for i, t in enumerate(lines):
        d.text((8, 5 + i * line_h), t, fill=INK, font=fnt)
    out.paste(image, ((width - image.width) // 2, line_h * len(lines) + 10))
    return out


def nice_ticks(lo, hi, count=5):
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _tick_text(v, percent):
    if percent:
        return f"{v * 100:g}%"
    return f"{v:g}"


def plot_panel(draw, box, series, title, ylabel, percent=False, xlabel="epoch"):
    """Line chart of `series` [(label, xs, ys, colour)] inside box (x0, y0, x1, y1).

    Points that are None or not finite are left out; a lone point shows as a dot."""
    x0, y0, x1, y1 = box
    fnt, small = font(14), font(12)
    left, right, top, bottom = x0 + 62, x1 - 12, y0 + 30, y1 - 42
    draw.text((x0 + 62, y0 + 6), title, fill=INK, font=fnt)
    pts = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys)
           if y is not None and math.isfinite(y)]
    if not pts:
        draw.text((left, (top + bottom) // 2), "no values recorded", fill=MUTED, font=fnt)
        return
    xs_all = [p[0] for p in pts]
    ys_all = [p[1] for p in pts]
    xt = nice_ticks(min(xs_all) if len(set(xs_all)) > 1 else min(xs_all) - 1, max(xs_all), 6)
    xt = [t for t in xt if float(t).is_integer()] or xt       # epochs are whole numbers
    yt = nice_ticks(min(ys_all), max(ys_all), 5)
    xlo, xhi, ylo, yhi = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v):
        return left + (v - xlo) / ((xhi - xlo) or 1) * (right - left)

    def sy(v):
        return bottom - (v - ylo) / ((yhi - ylo) or 1) * (bottom - top)
    for t in yt:
        draw.line([(left, sy(t)), (right, sy(t))], fill=GRID)
        label = _tick_text(t, percent)
        w, h = text_size(draw, label, small)
        draw.text((left - 6 - w, sy(t) - h / 2 - 2), label, fill=MUTED, font=small)
    for t in xt:
        draw.line([(sx(t), bottom), (sx(t), bottom + 4)], fill=MUTED)
        label = f"{t:g}"
        w, _ = text_size(draw, label, small)
        draw.text((sx(t) - w / 2, bottom + 6), label, fill=MUTED, font=small)
    draw.rectangle([left, top, right, bottom], outline=MUTED)
    w, _ = text_size(draw, xlabel, small)
    draw.text(((left + right) / 2 - w / 2, bottom + 22), xlabel, fill=MUTED, font=small)
    draw.text((x0 + 4, top - 22), ylabel, fill=MUTED, font=small)
    legend_y = top + 6
    for label, xs, ys, colour in series:
        line = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        if line:
            w, _ = text_size(draw, label, small)
            draw.line([(right - w - 34, legend_y + 8), (right - w - 14, legend_y + 8)], fill=colour, width=3)
            draw.text((right - w - 8, legend_y), label, fill=INK, font=small)
            legend_y += 18
