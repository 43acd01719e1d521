"""Drawing a scene: a coloured, lightly textured background and one or two glyphs, drawn at 128 px and
box-downsampled to 64x64."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .catalog import BACKGROUNDS
from .glyphs import scaled_glyph
from .negatives import negative_sprite

OUTPUT_SIDE = 64
SUPERSAMPLE = 2  # draw at 128 px, then average 2x2 blocks


@dataclass(frozen=True)
class Layout:
    """Object sizes (longer side) and centres, in output pixels."""

    single_size: tuple[tuple[str, float], ...] = (("small", 22.0), ("large", 38.0))
    pair_size: tuple[tuple[str, float], ...] = (("small", 20.0), ("large", 28.0))
    single_offset: tuple[tuple[str, float], ...] = (("small", 17.0), ("large", 11.0))  # distance from the centre
    pair_centres: tuple[float, float] = (17.0, 47.0)  # x of the left and of the right object
    gradient_strength: float = 0.12  # brightness change across the image, as a fraction
    noise_sigma: float = 5.0  # per-pixel noise (0-255 scale) before downsampling


LAYOUT = Layout()
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "centre": (0, 0)}


def object_placements(spec, layout: Layout = LAYOUT) -> list[tuple[str, float, float, float, float, bool]]:
    """(name, centre x, centre y, longer side, rotation, flip) of each object, in output pixels."""
    if spec.second_object is None:
        side = dict(layout.single_size)[spec.size] * spec.scale
        offset = dict(layout.single_offset)[spec.size]
        ux, uy = DIRECTIONS[spec.position]
        centre = OUTPUT_SIDE / 2
        return [
            (
                spec.object,
                centre + ux * offset + spec.dx,
                centre + uy * offset + spec.dy,
                side,
                spec.rotation,
                spec.flip,
            )
        ]
    side = dict(layout.pair_size)[spec.size] * spec.scale
    left, right = layout.pair_centres
    first_x, second_x = (left, right) if spec.position == "left" else (right, left)
    centre = OUTPUT_SIDE / 2
    return [
        (spec.object, first_x + spec.dx, centre + spec.dy, side, spec.rotation, spec.flip),
        (
            spec.second_object,
            second_x + spec.second_dx,
            centre + spec.second_dy,
            side,
            spec.second_rotation,
            spec.second_flip,
        ),
    ]


def background(spec, layout: Layout = LAYOUT) -> np.ndarray:
    """(H, W, 3) float array at drawing resolution: the named colour, plain, with a gradient, or with noise."""
    side = OUTPUT_SIDE * SUPERSAMPLE
    colour = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    pixels = np.broadcast_to(colour, (side, side, 3)).astype(np.float32)
    if spec.texture == "gradient":
        ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
        angle = np.deg2rad(spec.texture_angle)
        field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        pixels = pixels * (1.0 + layout.gradient_strength * field[..., None])
    elif spec.texture == "noise":
        noise = np.random.default_rng(spec.texture_seed).normal(0.0, layout.noise_sigma, (side, side, 1))
        pixels = pixels + noise.astype(np.float32)
    elif spec.texture != "plain":
        raise ValueError(f"unknown texture {spec.texture!r}: plain, gradient or noise")
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw_object(
    canvas: Image.Image,
    mask: Image.Image | None,
    placement,
    negative: str | None = None,
    rng: random.Random | None = None,
) -> None:
    name, x, y, side, rotation, flip = placement
    sprite = scaled_glyph(name, max(2, round(side * SUPERSAMPLE)), flip)
    if negative is not None:
        sprite = negative_sprite(sprite, negative, rng or random.Random(0))
    if rotation:
        sprite = sprite.rotate(rotation, resample=Image.BICUBIC, expand=True)
    corner = (round(x * SUPERSAMPLE - sprite.width / 2), round(y * SUPERSAMPLE - sprite.height / 2))
    canvas.alpha_composite(sprite, corner)
    if mask is not None:
        mask.paste(sprite.getchannel("A"), corner, sprite.getchannel("A"))


def render_layers(
    spec, with_mask: bool = False, negatives: tuple[str | None, ...] = (), rng: random.Random | None = None
) -> tuple[Image.Image, Image.Image | None]:
    """The 64x64 RGB scene and, if asked, the first object's mask (L, 255 on the object; 0 elsewhere).

    ``negatives`` names, per object, a kind of `perfusion.world.negatives` to draw instead of the glyph (None: the
    glyph itself); ``rng`` draws the negatives' randomness."""
    canvas = Image.fromarray(background(spec)).convert("RGBA")
    placements = object_placements(spec)
    mask = Image.new("L", canvas.size, 0) if with_mask else None
    for index, placement in enumerate(placements):
        negative = negatives[index] if index < len(negatives) else None
        _draw_object(canvas, mask if index == 0 else None, placement, negative, rng)
    image = canvas.convert("RGB").reduce(SUPERSAMPLE)
    return image, (mask.reduce(SUPERSAMPLE) if mask is not None else None)
