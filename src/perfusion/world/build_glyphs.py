"""Re-render the committed glyph assets from the Noto Color Emoji font.

    python -m perfusion.world.build_glyphs [--font /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf]

Needs the font (Debian: fonts-noto-color-emoji, SIL Open Font License); the scene generator itself reads only the
PNGs this writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .catalog import OBJECTS
from .glyphs import GLYPH_DIR, GLYPH_SIDE, glyph_path

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the bitmap font offers (136x128 glyphs)
DRAW_CANVAS = 192


def render_emoji(font: ImageFont.FreeTypeFont, emoji: str) -> Image.Image:
    """One glyph cropped to its visible pixels and fitted into a GLYPH_SIDE square."""
    canvas = Image.new("RGBA", (DRAW_CANVAS, DRAW_CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), emoji, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"the font has no glyph for {emoji!r} (U+{' U+'.join(f'{ord(c):04X}' for c in emoji)})")
    image = canvas.crop(box)
    factor = GLYPH_SIDE / max(image.size)
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)


def build(font_path: Path) -> list[Path]:
    if not font_path.exists():
        raise FileNotFoundError(f"{font_path}: no such font (Debian package fonts-noto-color-emoji)")
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    GLYPH_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name, item in OBJECTS.items():
        path = glyph_path(name)
        render_emoji(font, item.emoji).save(path, optimize=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--font", type=Path, default=DEFAULT_FONT)
    paths = build(parser.parse_args(argv).font)
    print(f"{len(paths)} glyphs written to {GLYPH_DIR} ({sum(p.stat().st_size for p in paths) // 1024} KB)")


if __name__ == "__main__":
    main()
