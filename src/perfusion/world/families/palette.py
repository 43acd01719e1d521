"""Colours of the families world: twelve coarse colour names, each an anchor in sRGB, and a continuum around them.

An instance's colour is any sRGB triple; its coarse name is the nearest anchor. Captions only ever use the name, so
the exact shade is part of an instance's identity that no word pins down.
"""

from __future__ import annotations

import random

# Coarse names a caption may use, with the anchor each names (sRGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "orange": (235, 130, 40),
    "yellow": (238, 208, 70),
    "green": (70, 160, 70),
    "teal": (30, 150, 150),
    "blue": (50, 90, 205),
    "purple": (130, 70, 180),
    "pink": (240, 150, 190),
    "brown": (125, 80, 45),
    "black": (40, 40, 44),
    "white": (240, 238, 232),
    "gray": (130, 130, 134),
}

# Backgrounds: the named colours a scene may be set on (no brown or black: dark objects need a lighter ground).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    name: COLOURS[name]
    for name in ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "white", "gray")
}
BACKGROUND_TEXTURES = ("plain", "gradient", "noise")

Colour = tuple[int, int, int]


def colour_name(colour: Colour) -> str:
    """The coarse name of a colour: its nearest anchor (sRGB distance)."""
    return min(COLOURS, key=lambda name: colour_distance(COLOURS[name], colour))


def colour_distance(first: Colour, second: Colour) -> float:
    """Euclidean sRGB distance scaled to [0, 1] (black to white is 1)."""
    return sum((a - b) ** 2 for a, b in zip(first, second)) ** 0.5 / (3**0.5 * 255)


def sample_colour(names: tuple[str, ...], rng: random.Random, blend: float = 0.45, jitter: int = 22) -> Colour:
    """A colour on the continuum around the anchors `names`: an anchor, half the time blended part-way toward
    another allowed anchor, plus a little jitter; redrawn until its coarse name is one of `names`."""
    while True:
        base = COLOURS[rng.choice(names)]
        if len(names) > 1 and rng.random() < 0.5:
            other, share = COLOURS[rng.choice(names)], rng.uniform(0.0, blend)
            base = tuple(a + (b - a) * share for a, b in zip(base, other))
        colour = tuple(int(min(255, max(0, round(c + rng.uniform(-jitter, jitter))))) for c in base)
        if colour_name(colour) in names:
            return colour


def shade(colour: Colour, factor: float) -> Colour:
    """The colour darkened (factor < 1) or lightened toward white (factor > 1)."""
    if factor <= 1:
        return tuple(int(round(c * factor)) for c in colour)
    return tuple(int(round(c + (255 - c) * (factor - 1))) for c in colour)


PATTERN_CONTRAST = 0.2  # a pattern's least lightness difference from the body (of 1), unless its hue sets it apart
DISTINCT_HUE = 0.28  # colour_distance at which two colours read apart at 64 px whatever their lightness


def luminance(colour: Colour) -> float:
    """Relative lightness in [0, 1]: Y = (0.299 R + 0.587 G + 0.114 B) / 255 (Rec. 601 weights)."""
    red, green, blue = colour
    return (0.299 * red + 0.587 * green + 0.114 * blue) / 255


def pattern_colour(body: Colour, second: Colour) -> Colour:
    """The colour a pattern is drawn in: ``second``, made lighter or darker (never renamed) until its lightness
    differs from the body's by PATTERN_CONTRAST, where their hues alone would not tell them apart. A gray patch on a
    brown dog, or teal stripes on a gray bird, otherwise vanish at 64 px and in the autoencoder."""

    def apart(colour: Colour) -> float:  # lightness difference from the body
        return abs(luminance(colour) - luminance(body))

    if colour_distance(body, second) >= DISTINCT_HUE or apart(second) >= PATTERN_CONTRAST:
        return second
    name = colour_name(second)
    lighter = luminance(second) >= luminance(body)
    best = second
    for direction in (lighter, not lighter):  # the way it already leans first, then the other
        for step in range(1, 21):
            candidate = shade(second, 1 + 0.05 * step if direction else 1 - 0.04 * step)
            if colour_name(candidate) != name:
                break
            if apart(candidate) >= PATTERN_CONTRAST:
                return candidate
            best = max(best, candidate, key=apart)
    return best  # the most contrast its name allows
