#!/usr/bin/env python
"""Tile demo outputs into one captioned figure, compressed for the documentation.

    python tools/compose_demo_figure.py --output docs/images/demo_clusters.png --columns 2 \
        --max-kb 200 input.png:"input" a_clusters_res2.png:"res2 clusters" ...

Each positional argument is ``PATH`` or ``PATH:CAPTION``. Tiles are scaled to the first one's
height; the figure is written as a palette PNG (lossless for the demo's flat colours) and made
smaller until it fits ``--max-kb``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from typing import List, Tuple

from PIL import Image, ImageDraw, ImageFont

CAPTION_HEIGHT = 26
CAPTION_FONT_SIZE = 16
GAP = 6


def parse_tile(spec: str) -> Tuple[str, str]:
    path, _, caption = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"compose_demo_figure: no such image {path!r}")
    return path, caption


def compose(tiles: List[Tuple[str, str]], columns: int) -> Image.Image:
    images = [Image.open(path).convert("RGB") for path, _ in tiles]
    height = images[0].height
    images = [im.resize((round(im.width * height / im.height), height)) for im in images]
    width = max(im.width for im in images)
    rows = math.ceil(len(images) / columns)
    caption_h = CAPTION_HEIGHT if any(caption for _, caption in tiles) else 0
    cell_h = height + caption_h
    figure = Image.new(
        "RGB",
        (columns * width + (columns - 1) * GAP, rows * cell_h + (rows - 1) * GAP),
        "white",
    )
    draw = ImageDraw.Draw(figure)
    try:
        font = ImageFont.load_default(size=CAPTION_FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    for index, (image, (_, caption)) in enumerate(zip(images, tiles)):
        x = (index % columns) * (width + GAP)
        y = (index // columns) * (cell_h + GAP)
        if caption:
            draw.text((x + 4, y + 4), caption, fill="black", font=font)
        figure.paste(image, (x, y + caption_h))
    return figure


def save_under(figure: Image.Image, path: str, max_kb: int) -> Tuple[int, Tuple[int, int]]:
    """Write ``figure`` as a 256-colour PNG, scaling it down until it is under ``max_kb``;
    returns (bytes written, (width, height))."""
    scale = 1.0
    while True:
        size = (round(figure.width * scale), round(figure.height * scale))
        image = figure.resize(size, Image.LANCZOS) if scale < 1 else figure
        quantized = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
        buffer = io.BytesIO()
        quantized.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_kb * 1024 or scale < 0.3:
            break
        scale *= 0.85
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return buffer.tell(), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiles", nargs="+", help="PATH or PATH:CAPTION")
    parser.add_argument("--output", required=True)
    parser.add_argument("--columns", type=int, default=2)
    parser.add_argument("--max-kb", type=int, default=200)
    args = parser.parse_args()
    figure = compose([parse_tile(t) for t in args.tiles], args.columns)
    num_bytes, (width, height) = save_under(figure, args.output, args.max_kb)
    print(f"{args.output}: {width}x{height}, {num_bytes / 1024:.0f} KB")


if __name__ == "__main__":
    main()
