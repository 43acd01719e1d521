"""Evaluation prompts that know what they ask for: a PromptSpec states some attributes and renders the prompt text
for any subject (a concept token such as "<mycat>", or its supercategory word for the CLIP-T text).

    spec = PromptSpec(background="red", position="left", supercategory="cat")
    spec.text("<mycat>")   # "a photo of a <mycat> on the left on a red background"
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from .captions import article
from .catalog import BACKGROUNDS, CATEGORIES, OBJECTS, POSITIONS, SIZES, TWO_OBJECT_POSITIONS

ATTRIBUTES = ("background", "position", "size", "second_object")
POSITION_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt states about the subject; None means not stated. With a second object, ``position`` is the
    subject's side ("left" or "right")."""

    background: str | None = None
    position: str | None = None
    size: str | None = None
    second_object: str | None = None  # an object name ("teacup") or a category word ("cup")
    supercategory: str | None = None  # the subject's category word; needed to tell the subject's side in a pair

    def __post_init__(self):
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(f"PromptSpec.background={self.background!r}; expected one of: {', '.join(BACKGROUNDS)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"PromptSpec.size={self.size!r}; expected one of: {', '.join(SIZES)}")
        if (
            self.second_object is not None
            and self.second_object not in OBJECTS
            and self.second_object not in CATEGORIES
        ):
            raise ValueError(f"PromptSpec.second_object={self.second_object!r} is neither an object nor a category")
        if self.supercategory is not None and self.supercategory not in CATEGORIES:
            raise ValueError(
                f"PromptSpec.supercategory={self.supercategory!r}; expected one of: {', '.join(CATEGORIES)}"
            )
        positions = POSITIONS if self.second_object is None else TWO_OBJECT_POSITIONS
        if self.position is not None and self.position not in positions:
            raise ValueError(f"PromptSpec.position={self.position!r}; expected one of: {', '.join(positions)}")
        if self.position is not None and self.second_object is not None and self.supercategory is None:
            raise ValueError("a two-object PromptSpec that states a side needs the subject's supercategory")

    @property
    def stated(self) -> tuple[str, ...]:
        return tuple(name for name in ATTRIBUTES if getattr(self, name) is not None)

    def text(self, subject: str) -> str:
        """The prompt with ``subject`` as the main object's word(s)."""
        size = f"{self.size} " if self.size else ""
        words = ["a photo of", article(f"{size}{subject}")]
        if self.second_object is not None:
            relation = {"left": "to the left of", "right": "to the right of", None: "next to"}[self.position]
            words += [relation, article(f"{size}{self.second_object}")]
        elif self.position is not None:
            words.append(POSITION_WORDS[self.position])
        if self.background is not None:
            words.append(f"on {article(self.background)} background")
        return " ".join(words)

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def standard_prompts(supercategory: str, count: int = 12, seed: int = 0) -> list[PromptSpec]:
    """A fixed, varied set of evaluation prompts for a concept of ``supercategory``: every one states a background;
    most a position, some a size, a quarter a second object from another category."""
    if supercategory not in CATEGORIES:
        raise ValueError(f"unknown supercategory {supercategory!r}; expected one of: {', '.join(CATEGORIES)}")
    rng = random.Random(f"prompts:{seed}:{supercategory}")
    others = [category for category in CATEGORIES if category != supercategory]
    backgrounds = list(BACKGROUNDS)
    prompts = []
    for index in range(count):
        background = backgrounds[index % len(backgrounds)]
        size = rng.choice(SIZES) if index % 3 == 0 else None
        if index % 4 == 3:
            prompts.append(
                PromptSpec(
                    background, rng.choice(TWO_OBJECT_POSITIONS + (None,)), size, rng.choice(others), supercategory
                )
            )
        else:
            prompts.append(
                PromptSpec(background, rng.choice(POSITIONS) if index % 5 else None, size, None, supercategory)
            )
    return prompts
