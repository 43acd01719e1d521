"""What the micro world contains: objects (Noto Color Emoji glyphs) in categories, background colours, positions
and sizes. The words its captions may use are captions.vocabulary().

Object names are the caption words for one particular glyph ("lovestruck cat"); the category word ("cat") is the
supercategory a concept is taught under. Held-out objects belong to ordinary categories but never appear in the base
model's training scenes: they exist only as example concepts and in the judge's training data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldObject:
    name: str  # caption words for this glyph, distinct from every other name and from every category word
    category: str  # supercategory word
    emoji: str  # the glyph's code points in Noto Color Emoji
    held_out: bool = False  # never in the base model's training scenes


def _objects(*rows: tuple[str, str, str], held_out: bool = False) -> list[WorldObject]:
    return [WorldObject(name, category, emoji, held_out) for name, category, emoji in rows]


_SEEN = _objects(
    ("ginger cat", "cat", "\U0001f408"),
    ("cat face", "cat", "\U0001f431"),
    ("lovestruck cat", "cat", "\U0001f63b"),
    ("screaming cat", "cat", "\U0001f640"),
    ("spotted dog", "dog", "\U0001f415"),
    ("dog face", "dog", "\U0001f436"),
    ("guide dog", "dog", "\U0001f9ae"),
    ("shepherd dog", "dog", "\U0001f415\u200d\U0001f9ba"),
    ("bluebird", "bird", "\U0001f426"),
    ("penguin", "bird", "\U0001f427"),
    ("parrot", "bird", "\U0001f99c"),
    ("owl", "bird", "\U0001f989"),
    ("tuna", "fish", "\U0001f41f"),
    ("tropical fish", "fish", "\U0001f420"),
    ("pufferfish", "fish", "\U0001f421"),
    ("shark", "fish", "\U0001f988"),
    ("sunflower", "flower", "\U0001f33b"),
    ("rose", "flower", "\U0001f339"),
    ("tulip", "flower", "\U0001f337"),
    ("hibiscus", "flower", "\U0001f33a"),
    ("coffee cup", "cup", "\u2615"),
    ("teacup", "cup", "\U0001f375"),
    ("soda cup", "cup", "\U0001f964"),
    ("bubble tea", "cup", "\U0001f9cb"),
    ("sedan", "car", "\U0001f697"),
    ("taxi", "car", "\U0001f695"),
    ("racing car", "car", "\U0001f3ce\ufe0f"),
    ("police car", "car", "\U0001f693"),
    ("pine tree", "tree", "\U0001f332"),
    ("oak tree", "tree", "\U0001f333"),
    ("palm tree", "tree", "\U0001f334"),
    ("christmas tree", "tree", "\U0001f384"),
    ("apple", "fruit", "\U0001f34e"),
    ("banana", "fruit", "\U0001f34c"),
    ("strawberry", "fruit", "\U0001f353"),
    ("grapes", "fruit", "\U0001f347"),
    ("top hat", "hat", "\U0001f3a9"),
    ("sun hat", "hat", "\U0001f452"),
    ("baseball cap", "hat", "\U0001f9e2"),
    ("graduation cap", "hat", "\U0001f393"),
    ("sneaker", "shoe", "\U0001f45f"),
    ("high heel", "shoe", "\U0001f460"),
    ("cowboy boot", "shoe", "\U0001f462"),
    ("flip flop", "shoe", "\U0001fa74"),
    ("soccer ball", "ball", "\u26bd"),
    ("basketball", "ball", "\U0001f3c0"),
    ("football", "ball", "\U0001f3c8"),
    ("baseball", "ball", "\u26be"),
    ("bee", "bug", "\U0001f41d"),
    ("ladybug", "bug", "\U0001f41e"),
    ("butterfly", "bug", "\U0001f98b"),
    ("ant", "bug", "\U0001f41c"),
    ("sailboat", "boat", "\u26f5"),
    ("speedboat", "boat", "\U0001f6a4"),
    ("canoe", "boat", "\U0001f6f6"),
    ("cruise ship", "boat", "\U0001f6a2"),
)

# Each held-out object looks unlike the seen members of its category, so its identity is learnable from a few photos.
_HELD_OUT = _objects(
    ("black cat", "cat", "\U0001f408\u200d\u2b1b"),
    ("poodle", "dog", "\U0001f429"),
    ("beer mug", "cup", "\U0001f37a"),
    ("peacock", "bird", "\U0001f99a"),
    held_out=True,
)

OBJECTS: dict[str, WorldObject] = {item.name: item for item in _SEEN + _HELD_OUT}  # name -> object; order is stable
SEEN: tuple[str, ...] = tuple(item.name for item in _SEEN)
HELD_OUT: tuple[str, ...] = tuple(item.name for item in _HELD_OUT)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(item.category for item in _SEEN))

# Named background colours (sRGB), far apart so a 64x64 image's colour is never ambiguous. No black: black objects.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 70),
    "green": (60, 165, 70),
    "teal": (25, 150, 150),
    "blue": (45, 85, 205),
    "purple": (125, 60, 175),
    "pink": (245, 155, 195),
    "white": (242, 242, 242),
    "gray": (125, 125, 125),
}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
TWO_OBJECT_POSITIONS: tuple[str, ...] = ("left", "right")  # the first object's side; the second takes the other
SIZES: tuple[str, ...] = ("small", "large")


def members(category: str, include_held_out: bool = True) -> tuple[str, ...]:
    """Names of the objects in a category."""
    if category not in CATEGORIES:
        raise KeyError(f"unknown category {category!r}; categories: {', '.join(CATEGORIES)}")
    return tuple(
        name for name, item in OBJECTS.items() if item.category == category and (include_held_out or not item.held_out)
    )


def world_object(name: str) -> WorldObject:
    if name not in OBJECTS:
        raise KeyError(f"unknown object {name!r}; see perfusion.world.catalog.OBJECTS")
    return OBJECTS[name]
