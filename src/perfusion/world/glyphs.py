"""The objects' pictures: one RGBA PNG per object under assets/glyphs/, pre-rendered from Noto Color Emoji by
`python -m perfusion.world.build_glyphs`, so that nothing at run time needs the font."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

from .catalog import world_object

GLYPH_DIR = Path(__file__).resolve().parent / "assets" / "glyphs"
GLYPH_SIDE = 96  # stored glyphs fit a 96x96 square; the largest object is drawn at about 88 px before downsampling


def glyph_path(name: str) -> Path:
    world_object(name)  # unknown names fail here with the list of objects
    return GLYPH_DIR / f"{name.replace(' ', '_')}.png"


@functools.lru_cache(maxsize=None)
def glyph(name: str) -> Image.Image:
    """The stored RGBA glyph, cropped to its visible pixels."""
    path = glyph_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rebuild the glyphs with python -m perfusion.world.build_glyphs")
    with Image.open(path) as handle:
        return handle.convert("RGBA")


@functools.lru_cache(maxsize=4096)
def scaled_glyph(name: str, side: int, flip: bool) -> Image.Image:
    """The glyph resized so that its longer side is ``side`` pixels, optionally mirrored left-right."""
    source = glyph(name)
    factor = side / max(source.size)
    image = source.resize((max(1, round(source.width * factor)), max(1, round(source.height * factor))), Image.LANCZOS)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image
