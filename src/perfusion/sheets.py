"""Contact sheets: the images a figure was computed on, one row per setting, each image under its label.

    write_sheet(path, [SheetRow("beta 0.7", [(image, "red background, seed 0"), ...]), ...], title="...")

Every sweep, eval, demo and benchmark writes one beside its numbers, so that a figure can be checked by eye.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from perfusion.files import atomic_write

CELL = 96  # each image drawn at 96 px (64 px world images at 1.5x, nearest neighbour)
LABEL_LINES = 3
LABEL_WIDTH = 17  # characters per label line at the default font and 96 px
LINE_HEIGHT = 11
ROW_LABEL_WIDTH = 120
MAX_COLUMNS = 16  # longer rows wrap


@dataclass
class SheetRow:
    label: str  # the setting ("beta 0.7", "perfusion", "<mycat>")
    cells: list[tuple[Image.Image, str]] = field(default_factory=list)  # (image, its label: prompt, seed, verdict)


def prompt_cells(images_by_prompt: dict) -> list[tuple[Image.Image, str]]:
    """Cells of a row from {EvalPrompt: [images]}: each image under its prompt ("*" where the concept goes)."""
    return [
        (image, f"{prompt.template.removeprefix('a photo of ').replace('{}', '*')} #{number}")
        for prompt, images in images_by_prompt.items()
        for number, image in enumerate(images)
    ]


def sheet_image(rows: Sequence[SheetRow], title: str = "", columns: int | None = None) -> Image.Image:
    """The sheet as one RGB image."""
    rows = [row for row in rows if row.cells]
    if not rows:
        raise ValueError("a contact sheet needs at least one image")
    columns = columns or min(MAX_COLUMNS, max(len(row.cells) for row in rows))
    font = ImageFont.load_default(size=10)
    cell_height = CELL + LABEL_LINES * LINE_HEIGHT + 6
    title_height = 18 if title else 0
    lines_per_row = [-(-len(row.cells) // columns) for row in rows]
    width = ROW_LABEL_WIDTH + columns * (CELL + 4) + 4
    height = title_height + sum(lines_per_row) * cell_height + 4 * len(rows) + 4
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill="black", font=ImageFont.load_default(size=12))
    top = title_height
    for row, line_count in zip(rows, lines_per_row):
        for line_index, line in enumerate(textwrap.wrap(row.label, 19)[:6]):
            draw.text((4, top + 4 + line_index * LINE_HEIGHT), line, fill="black", font=font)
        for index, (image, label) in enumerate(row.cells):
            left = ROW_LABEL_WIDTH + (index % columns) * (CELL + 4)
            cell_top = top + (index // columns) * cell_height
            scale = CELL / max(image.size)  # the whole image in the cell, its aspect kept
            shown = image.convert("RGB").resize(
                (round(image.width * scale), round(image.height * scale)), Image.NEAREST
            )
            sheet.paste(shown, (left + (CELL - shown.width) // 2, cell_top + 2 + (CELL - shown.height) // 2))
            for line_index, line in enumerate(textwrap.wrap(label, LABEL_WIDTH)[:LABEL_LINES]):
                draw.text((left, cell_top + CELL + 4 + line_index * LINE_HEIGHT), line, fill="black", font=font)
        top += line_count * cell_height + 4
        draw.line((0, top, width, top), fill=(200, 200, 200))
    return sheet


def write_sheet(path: str | Path, rows: Sequence[SheetRow], title: str = "", columns: int | None = None) -> Path:
    """Write the sheet as a PNG (atomically) and return its path."""
    path = Path(path)
    image = sheet_image(rows, title, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG", optimize=True))
    return path
