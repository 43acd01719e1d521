"""Caption wordings for a scene: several templates, attribute order varied, some attributes left out.

The object is named by its own name ("lovestruck cat") or, sometimes, by its category word ("cat"), so that the
category word means "any member of the category".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .catalog import BACKGROUNDS, OBJECTS, world_object

INTROS = ("", "", "", "a photo of", "a picture of", "an image of", "a drawing of", "a rendering of")
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "in the left half"),
    "right": ("on the right", "at the right", "in the right half"),
    "top": ("at the top", "near the top", "in the upper half"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half"),
    "centre": ("in the centre", "in the middle", "centered"),
}
BACKGROUND_PHRASES = ("on {a} background", "against {a} background", "in front of {a} background", "on {c}")
PAIR_PHRASES = ("next to", "beside", "and")
SIDE_PHRASES = {"left": "to the left of", "right": "to the right of"}
PLAIN_BACKGROUND_FORM = "{c} background"  # used after a comma: "a cat, red background"


@dataclass(frozen=True)
class CaptionChoice:
    """How likely a caption states each attribute, and names the object by its category word."""

    state_background: float = 0.8
    state_position: float = 0.65
    state_size: float = 0.55
    category_word: float = 0.25
    bare_photo: float = 0.08  # "a photo of a tulip" with no attribute at all (one-object scenes)


@dataclass(frozen=True)
class Caption:
    text: str
    stated: frozenset[str]  # which of background / position / size / second_object the text states


def article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def noun_phrase(name: str, size_word: str | None, use_category: bool) -> str:
    noun = world_object(name).category if use_category else name
    return article(f"{size_word} {noun}" if size_word else noun)


def _background_phrase(colour: str, rng: random.Random, after_comma: bool) -> str:
    form = PLAIN_BACKGROUND_FORM if after_comma else rng.choice(BACKGROUND_PHRASES)
    return form.format(a=article(colour), c=colour)


def describe(spec, rng: random.Random, choice: CaptionChoice = CaptionChoice()) -> Caption:
    """A caption for ``spec`` (a scenes.SceneSpec) drawn with ``rng``, and which attributes it states."""
    intro = rng.choice(INTROS)
    if rng.random() < choice.bare_photo and spec.second_object is None:
        intro = intro or "a photo of"
        text = f"{intro} {noun_phrase(spec.object, None, rng.random() < choice.category_word)}"
        return Caption(text, frozenset())
    stated = {
        key
        for key, chance in (
            ("background", choice.state_background),
            ("position", choice.state_position),
            ("size", choice.state_size),
        )
        if rng.random() < chance
    }
    size_word = rng.choice(SIZE_WORDS[spec.size]) if "size" in stated else None
    first = noun_phrase(spec.object, size_word, rng.random() < choice.category_word)
    if spec.second_object is None:
        subject, position = first, (rng.choice(POSITION_PHRASES[spec.position]) if "position" in stated else None)
    else:
        stated.add("second_object")
        second = noun_phrase(spec.second_object, size_word, rng.random() < choice.category_word)
        subject, position = _pair(first, second, spec.position, "position" in stated, rng), None
    tail = [phrase for phrase in (position,) if phrase]
    if "background" in stated:
        after_comma = rng.random() < 0.3
        tail.insert(
            rng.randrange(len(tail) + 1),
            (", " if after_comma else "") + _background_phrase(spec.background, rng, after_comma),
        )
    text = " ".join(part for part in (intro, subject, *tail) if part).replace(" ,", ",")
    return Caption(text, frozenset(stated))


def _pair(first: str, second: str, side: str, state_side: bool, rng: random.Random) -> str:
    """Two objects: sides stated ("X on the left and Y on the right", "X to the left of Y") or not ("X next to Y")."""
    if not state_side:
        return f"{first} {rng.choice(PAIR_PHRASES)} {second}"
    if rng.random() < 0.5:
        return f"{first} {SIDE_PHRASES[side]} {second}"
    left, right = (first, second) if side == "left" else (second, first)
    return f"{left} on the left and {right} on the right"


def caption(spec, rng: random.Random) -> str:
    return describe(spec, rng).text


def template_words() -> set[str]:
    """Every word the templates themselves contribute (object and colour words come from the catalog)."""
    phrases = [
        *INTROS,
        *BACKGROUND_PHRASES,
        *PAIR_PHRASES,
        *SIDE_PHRASES.values(),
        PLAIN_BACKGROUND_FORM,
        "a an on the left and right",
    ]
    phrases += [word for words in SIZE_WORDS.values() for word in words]
    phrases += [phrase for options in POSITION_PHRASES.values() for phrase in options]
    return {word for phrase in phrases for word in re.findall(r"[a-z]+", phrase)}


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can use (object names, categories, colours and the template words), sorted."""
    words = template_words()
    for item in OBJECTS.values():
        words.update(item.name.split())
        words.add(item.category)
    words.update(BACKGROUNDS)
    return tuple(sorted(words))
