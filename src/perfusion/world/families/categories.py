"""The categories of the families world and the parameters that make up an instance's identity.

Each category is a family: shape parameters on a continuum (each in [0, 1]; coarse words name its low and high
thirds), a body colour from the category's colour names, a second colour and a pattern with its scale, and for
some categories an accessory. Pose (facing, tilt, and for pets sitting or standing) is not identity.

A colour name or pattern a category never uses in training is that category's "stretch" tier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .palette import COLOURS

ALL_COLOURS = tuple(COLOURS)
PATTERNS = ("plain", "stripes", "spots", "patches", "band")
PATTERN_WORDS = {  # caption wordings of each pattern (plain is mostly left unsaid)
    "plain": ("plain", "solid"),
    "stripes": ("striped", "with stripes"),
    "spots": ("spotted", "with spots"),
    "patches": ("patched", "with patches"),
    "band": ("banded", "with a band"),
}


def third(value: float) -> int:
    """0, 1 or 2: the third of [0, 1] a shape value falls in (captions name only the outer two)."""
    return 0 if value < 1 / 3 else 2 if value > 2 / 3 else 1


@dataclass(frozen=True)
class ShapeParameter:
    """A shape parameter in [0, 1]; captions name only its low or high third, each with a coarse word."""

    name: str
    low: tuple[str, ...] = ()  # words for values below 1/3 (empty: never named)
    high: tuple[str, ...] = ()  # words for values above 2/3

    def words(self, value: float) -> tuple[str, ...]:
        return (self.low, (), self.high)[third(value)]


@dataclass(frozen=True)
class Category:
    name: str
    shapes: tuple[ShapeParameter, ...]
    colours: tuple[str, ...]  # body colour names used in training
    second_colours: tuple[str, ...]  # pattern and accessory colours
    patterns: tuple[str, ...]  # patterns used in training
    accessory: str | None = None  # e.g. "collar"; present on some instances
    poses: tuple[str, ...] = ("standing",)
    # Family words: a word that names a region of the family ("tabby"), with the predicate that says who is in it.
    family_words: tuple[tuple[str, Callable], ...] = field(default=())
    pet: bool = False

    @property
    def shape_names(self) -> tuple[str, ...]:
        return tuple(shape.name for shape in self.shapes)

    @property
    def stretch_colours(self) -> tuple[str, ...]:
        return tuple(name for name in ALL_COLOURS if name not in self.colours)

    @property
    def stretch_patterns(self) -> tuple[str, ...]:
        return tuple(name for name in PATTERNS if name not in self.patterns)


def _shape(name, low=(), high=()):
    return ShapeParameter(name, tuple(low), tuple(high))


CATEGORIES: dict[str, Category] = {
    category.name: category
    for category in (
        Category(
            "cat",
            shapes=(
                _shape("build", ["slim", "slender"], ["chubby", "fat"]),
                _shape("head"),
                _shape("ears", ["small-eared"], ["big-eared"]),
                _shape("tail", ["short-tailed"], ["long-tailed"]),
                _shape("curl"),
                _shape("legs", ["short-legged"], ["long-legged"]),
            ),
            colours=("black", "white", "gray", "orange", "brown"),
            second_colours=("black", "white", "gray", "orange", "brown"),
            patterns=("plain", "stripes", "spots", "patches"),
            accessory="collar",
            poses=("standing", "sitting"),
            family_words=(
                ("tabby", lambda i: i.pattern == "stripes"),
                ("kitten", lambda i: i.shape["head"] > 0.6 and i.shape["legs"] < 0.4),
            ),
            pet=True,
        ),
        Category(
            "dog",
            shapes=(
                _shape("build", ["slim", "slender"], ["chubby", "stocky"]),
                _shape("floppy", ["pointy-eared"], ["floppy-eared"]),
                _shape("ears", ["small-eared"], ["big-eared"]),
                _shape("snout", ["short-snouted"], ["long-snouted"]),
                _shape("tail", ["short-tailed"], ["long-tailed"]),
                _shape("legs", ["short-legged"], ["long-legged"]),
            ),
            colours=("brown", "black", "white", "gray", "orange", "yellow"),
            second_colours=("brown", "black", "white", "gray", "orange"),
            patterns=("plain", "spots", "patches"),
            accessory="collar",
            poses=("standing", "sitting"),
            family_words=(
                ("puppy", lambda i: i.shape["legs"] < 0.4 and i.shape["build"] > 0.5),
                (
                    "dalmatian",
                    lambda i: i.pattern == "spots" and i.colour_name == "white" and i.second_colour_name == "black",
                ),
            ),
            pet=True,
        ),
        Category(
            "bird",
            shapes=(
                _shape("build", ["slim"], ["plump", "round"]),
                _shape("beak", ["short-beaked"], ["long-beaked"]),
                _shape("tail", ["short-tailed"], ["long-tailed"]),
                _shape("crest", [], ["crested"]),
                _shape("legs", [], ["long-legged"]),
            ),
            colours=ALL_COLOURS,
            second_colours=ALL_COLOURS,
            patterns=("plain", "stripes", "patches"),
            pet=True,
        ),
        Category(
            "fish",
            shapes=(
                _shape("height", ["slender", "long"], ["tall", "round"]),
                _shape("tail", ["small-tailed"], ["big-tailed"]),
                _shape("fins", ["small-finned"], ["big-finned"]),
                _shape("eye", [], ["big-eyed"]),
            ),
            colours=("orange", "yellow", "red", "blue", "teal", "purple", "pink", "gray"),
            second_colours=ALL_COLOURS,
            patterns=("plain", "stripes", "spots"),
            pet=True,
        ),
        Category(
            "mug",
            shapes=(
                _shape("height", ["short", "squat"], ["tall"]),
                _shape("taper", [], ["tapered"]),
                _shape("handle", ["round-handled"], ["square-handled"]),
                _shape("handle_size", ["small-handled"], ["big-handled"]),
                _shape("rim"),
            ),
            colours=ALL_COLOURS,
            second_colours=ALL_COLOURS,
            patterns=("plain", "stripes", "spots", "band"),
        ),
        Category(
            "teddy",
            shapes=(
                _shape("build", ["slim"], ["chubby", "fat"]),
                _shape("head", ["small-headed"], ["big-headed"]),
                _shape("ears", ["small-eared"], ["big-eared"]),
                _shape("arms", ["short-armed"], ["long-armed"]),
                _shape("muzzle"),
            ),
            colours=("brown", "orange", "yellow", "white", "gray", "pink", "black"),
            second_colours=("brown", "white", "pink", "yellow", "orange", "gray"),
            patterns=("plain", "patches"),
            accessory="bow",
        ),
        Category(
            "vase",
            shapes=(
                _shape("height", ["short", "squat"], ["tall"]),
                _shape("neck", ["short-necked"], ["long-necked"]),
                _shape("belly", [], ["round"]),
                _shape("lip", [], ["flared"]),
            ),
            colours=("blue", "teal", "green", "red", "white", "purple", "yellow", "pink", "black", "orange"),
            second_colours=ALL_COLOURS,
            patterns=("plain", "stripes", "spots", "band"),
        ),
        Category(
            "car",
            shapes=(
                _shape("length", ["short"], ["long"]),
                _shape("cabin", ["low-roofed"], ["tall"]),
                _shape("wheels", ["small-wheeled"], ["big-wheeled"]),
                _shape("slope", ["boxy"], ["sleek"]),
            ),
            colours=("red", "blue", "black", "white", "gray", "yellow", "green", "orange"),
            second_colours=("white", "black", "yellow", "red", "blue", "gray"),
            patterns=("plain", "stripes", "band"),
        ),
    )
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
POSES = ("standing", "sitting")
ACCESSORIES = ("collar", "bow")


def category(name: str) -> Category:
    if name not in CATEGORIES:
        raise KeyError(f"unknown category {name!r}; categories: {', '.join(CATEGORIES)}")
    return CATEGORIES[name]
