"""A contact sheet of world scenes with their captions (the picture in docs/world.md).

python -m perfusion.world.grid [--out docs/world_grid.png] [--first-seed 0] [--rows 4] [--columns 6]
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .scenes import Scene, make_scene

CELL_ZOOM = 2  # 64 px scenes shown at 128 px
CAPTION_LINES = 5
CAPTION_WIDTH = 21  # characters per caption line (fits 128 px at the default font)
LINE_HEIGHT = 13


def scene_grid(scenes: Sequence[Scene], columns: int) -> Image.Image:
    if not scenes:
        raise ValueError("no scenes to draw")
    font = ImageFont.load_default(size=11)
    side = 64 * CELL_ZOOM
    cell_height = side + CAPTION_LINES * LINE_HEIGHT + 6
    rows = -(-len(scenes) // columns)
    sheet = Image.new("RGB", (columns * (side + 8) + 8, rows * cell_height + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for index, scene in enumerate(scenes):
        left, top = 8 + (index % columns) * (side + 8), 8 + (index // columns) * cell_height
        sheet.paste(scene.image.resize((side, side), Image.NEAREST), (left, top))
        lines = textwrap.wrap(scene.caption, CAPTION_WIDTH)[:CAPTION_LINES]
        for line_index, line in enumerate(lines):
            draw.text((left, top + side + 3 + line_index * LINE_HEIGHT), line, fill="black", font=font)
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/world_grid.png"))
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--columns", type=int, default=6)
    arguments = parser.parse_args(argv)
    seeds = range(arguments.first_seed, arguments.first_seed + arguments.rows * arguments.columns)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    scene_grid([make_scene(seed) for seed in seeds], arguments.columns).save(arguments.out, optimize=True)
    print(f"{arguments.out} ({arguments.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
