"""Objects that are not objects: an object's own colours without its shape, for the judge to refuse.

A judge trained only on clean renders reads colour, and then a square of the concept's colours passes as the concept.
Each kind below keeps a glyph's pixels (its colours, its rough size and place) and destroys its shape:

- ``shuffle``: the glyph cut into a grid of tiles, the tiles permuted;
- ``noise_square``: its box filled with its own pixels drawn at random (in blocks of one to a few pixels);
- ``blob``: an irregular blob with a smooth outline, filled with its pixels as noise;
- ``blur``: the glyph blurred until its outline is gone;
- ``fragment``: one to three small pieces of the glyph, the rest gone.

    sprite = negative_sprite(glyph_rgba, "shuffle", rng)   # RGBA of the same size
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

KINDS: tuple[str, ...] = ("shuffle", "noise_square", "blob", "blur", "fragment")


def _opaque_colours(pixels: np.ndarray) -> np.ndarray:
    """(n, 3) colours of the glyph's clearly opaque pixels."""
    opaque = pixels[..., 3] > 128
    colours = pixels[opaque][:, :3]
    return colours if len(colours) else pixels.reshape(-1, 4)[:, :3]


def _random_fill(colours: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) of the glyph's colours drawn at random, in blocks of 1-4 pixels. Never smoothed: a smooth blob with a
    few darker spots is what the base model's soft samples of real objects look like."""
    block = int(rng.integers(1, 5))
    rows, cols = -(-height // block), -(-width // block)
    drawn = colours[rng.integers(len(colours), size=rows * cols)].reshape(rows, cols, 3)
    return np.repeat(np.repeat(drawn, block, axis=0), block, axis=1)[:height, :width].astype(np.uint8)


def _shuffle(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    tiles = int(rng.integers(3, 6))
    ys, xs = np.linspace(0, height, tiles + 1).astype(int), np.linspace(0, width, tiles + 1).astype(int)
    tile_h, tile_w = min(np.diff(ys)), min(np.diff(xs))
    cells = [pixels[y : y + tile_h, x : x + tile_w] for y in ys[:-1] for x in xs[:-1]]
    order = rng.permutation(len(cells))
    while len(cells) > 1 and (order == np.arange(len(cells))).mean() > 0.25:  # most tiles must move
        order = rng.permutation(len(cells))
    out = np.zeros_like(pixels)
    for index, (y, x) in enumerate((y, x) for y in ys[:-1] for x in xs[:-1]):
        cell = cells[order[index]]
        if rng.random() < 0.5:
            cell = np.rot90(cell, k=int(rng.integers(1, 4))) if tile_h == tile_w else cell[::-1]
        out[y : y + tile_h, x : x + tile_w] = cell
    return out


def _noise_square(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    out = np.zeros_like(pixels)
    out[..., :3] = _random_fill(_opaque_colours(pixels), height, width, rng)
    out[..., 3] = 255
    return out


def _blob(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    angle = np.arctan2(ys - height / 2, xs - width / 2)
    radius = np.hypot((ys - height / 2) / (height / 2), (xs - width / 2) / (width / 2))
    wobble = sum(rng.uniform(0, 0.18) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 5))
    alpha = (radius < rng.uniform(0.7, 0.95) + wobble).astype(np.uint8) * 255
    out = np.zeros_like(pixels)
    out[..., :3] = _random_fill(_opaque_colours(pixels), height, width, rng)
    out[..., 3] = np.asarray(Image.fromarray(alpha).filter(ImageFilter.GaussianBlur(radius=1.0)))
    return out


def _blur(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = max(pixels.shape[:2])
    radius = float(rng.uniform(0.22, 0.35)) * side  # heavier than a soft sample: its outline must be gone
    # Blur premultiplied colour so transparent pixels do not bleed their (arbitrary) colour in.
    premultiplied = pixels.astype(np.float32)
    premultiplied[..., :3] *= premultiplied[..., 3:] / 255.0
    channels = [
        np.asarray(
            Image.fromarray(premultiplied[..., c].astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
            dtype=np.float32,
        )
        for c in range(4)
    ]
    alpha = np.maximum(channels[3], 1e-3)
    out = np.zeros_like(pixels)
    for c in range(3):
        out[..., c] = np.clip(channels[c] * 255.0 / alpha, 0, 255).astype(np.uint8)
    out[..., 3] = np.clip(channels[3] * 1.6, 0, 255).astype(np.uint8)  # a blurred glyph fades; keep it visible
    return out


def _fragment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    keep = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        piece_h, piece_w = int(height * rng.uniform(0.15, 0.35)), int(width * rng.uniform(0.15, 0.35))
        y, x = int(rng.integers(0, height - piece_h + 1)), int(rng.integers(0, width - piece_w + 1))
        keep[y : y + piece_h, x : x + piece_w] = True
    out = pixels.copy()
    out[~keep, 3] = 0
    if not (out[..., 3] > 128).any():  # the pieces missed the glyph: fall back to scattered tiles
        return _shuffle(pixels, rng)
    return out


_MAKERS = {"shuffle": _shuffle, "noise_square": _noise_square, "blob": _blob, "blur": _blur, "fragment": _fragment}


def negative_sprite(sprite: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """An RGBA sprite of the same size holding ``sprite``'s colours without its shape."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown negative kind {kind!r}; expected one of: {', '.join(KINDS)}")
    pixels = np.array(sprite.convert("RGBA"), dtype=np.uint8)
    generator = np.random.default_rng(rng.randrange(2**32))
    return Image.fromarray(_MAKERS[kind](pixels, generator), "RGBA")
