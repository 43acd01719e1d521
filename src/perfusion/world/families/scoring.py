"""Scoring images of a personal concept drawn from concept prompts: recognised, attribute match and alignment.

    scores = score_concept_images(judge, instance, prompt, images, galleries)
    scores.recognised, scores.attribute_match, scores.alignment     # one value per image
    scores, sheet_row = draw_and_score(pipe, judge, instance, "<mycat>", galleries, "Perfusion")  # draw, then score

Recognition reads the concept's side of a two-object image (a square crop around it, enlarged to 64x64), so that
the second object does not enter the identity embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from perfusion.sheets import SheetRow

from .concept_prompts import ConceptPrompt, concept_prompts
from .controls import verbal_description
from .judge import Judge, Reading
from .metrics import Gallery, attribute_match, changed, stated_match
from .sampling import generate_images
from .scenes import PAIR_CENTRES

SEEDS = (0, 1)  # the laboratory's seeds per concept prompt

FOCUS_SIDE = 40  # pixels of the 64x64 image around one object of a pair, enlarged to 64 for the identity read


def focus(image: Image.Image, side: str) -> Image.Image:
    """A square crop around the left or right object of a pair, enlarged to the image's size."""
    centre = PAIR_CENTRES[0] if side == "left" else PAIR_CENTRES[1]
    left = int(round(min(max(centre - FOCUS_SIDE / 2, 0), image.width - FOCUS_SIDE)))
    top = (image.height - FOCUS_SIDE) // 2
    return image.crop((left, top, left + FOCUS_SIDE, top + FOCUS_SIDE)).resize(image.size, Image.BICUBIC)


def alignment(reading: Reading, row: int, prompt: ConceptPrompt, category: str) -> dict[str, bool]:
    """What the prompt states, as the judge reads it: background, position, size, the second object, a colour
    or pattern it asks for."""
    hits = {}
    stated = prompt.stated
    for key in ("background", "position", "size"):
        if key in stated:
            hits[key] = reading.label(key, row) == stated[key]
    if "second" in stated:
        sides = (reading.label("left", row), reading.label("right", row))
        hits["second"] = reading.label("count", row) == 2 and stated["second"] in sides and category in sides
    if "colour" in stated:
        hits["colour"] = reading.label("colour", row) == stated["colour"]
    if "pattern" in stated:
        hits["pattern"] = reading.label("pattern", row) == stated["pattern"]
    return hits


@dataclass
class ConceptScores:
    recognised: list[bool] = field(default_factory=list)
    attribute_match: list[float] = field(default_factory=list)
    stated_match: list[float] = field(default_factory=list)  # of the attributes the verbal oracle states
    alignment: list[float] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)
    # the concept's rank in its gallery by identity alone (0: first, chance 4.5 of 0-9), accepted or not: how near a
    # miss was, where "recognised" only says whether it was first
    ranks: list[int] = field(default_factory=list)

    def extend(self, other: "ConceptScores") -> None:
        for name in ("recognised", "attribute_match", "stated_match", "alignment", "details", "ranks"):
            getattr(self, name).extend(getattr(other, name))

    def summary(self) -> dict[str, float]:
        return {
            "recognised": float(np.mean(self.recognised)),
            "attribute_match": float(np.mean(self.attribute_match)),
            "stated_match": float(np.nanmean(self.stated_match)) if self.stated_match else float("nan"),
            "alignment": float(np.mean(self.alignment)),
            "identity_rank": float(np.mean(self.ranks)) if self.ranks else float("nan"),
            "images": len(self.recognised),
        }


class Galleries:
    """One gallery per (concept, changes), built once."""

    def __init__(self, judge: Judge):
        self.judge, self._built = judge, {}

    def __call__(self, instance, changes: dict) -> Gallery:
        key = (instance, tuple(sorted(changes.items())))
        if key not in self._built:
            self._built[key] = Gallery.build(instance, self.judge, changes)
        return self._built[key]


def score_concept_images(
    judge: Judge, instance, prompt: ConceptPrompt, images: list[Image.Image], galleries: Galleries
) -> ConceptScores:
    whole = judge.read(images)
    if "second" in prompt.stated:  # read the concept's own side: the side where the judge sees its category
        crops = []
        for row, image in enumerate(images):
            side = "left" if whole.label("left", row) == instance.category else "right"
            crops.append(focus(image, side))
        own = judge.read(crops)
    else:
        own = whole
    gallery = galleries(instance, prompt.changes)
    recognised = gallery.recognised(own)
    scores = ConceptScores(ranks=gallery.ranks(own))
    ignore = frozenset(prompt.changes)
    target = changed(instance, prompt.changes)
    for row in range(len(images)):
        matches = attribute_match(own, row, target, ignore)
        aligned = alignment(whole, row, prompt, instance.category)
        scores.recognised.append(recognised[row])
        scores.attribute_match.append(float(np.mean(list(matches.values()))))
        stated = stated_match(own, row, target, ignore)
        scores.stated_match.append(float(np.mean(list(stated.values()))) if stated else float("nan"))
        scores.alignment.append(float(np.mean(list(aligned.values()))) if aligned else 1.0)
        scores.details.append({"matches": matches, "stated": stated, "alignment": aligned})
    return scores


def draw_and_score(
    pipe,
    judge: Judge,
    instance,
    subject: str,
    galleries: Galleries,
    label: str,
    seeds=SEEDS,
    leave_out_changed: bool = False,
    prompts: list[ConceptPrompt] | None = None,
    steps: int | None = None,
) -> tuple[ConceptScores, SheetRow]:
    """Draw and score the concept prompts (default: all 12) with ``subject`` as the noun ("<concept>", "cat", or
    the verbal description, which then leaves out the attribute a prompt changes); the images as a sheet row.
    ``steps``: sampling steps (default: the base model's)."""
    scores, cells = ConceptScores(), []
    for prompt in concept_prompts(instance) if prompts is None else prompts:
        noun = verbal_description(instance, leave_out=frozenset(prompt.changes)) if leave_out_changed else subject
        images = generate_images(pipe, [prompt.text(noun)], list(seeds), steps=steps)
        result = score_concept_images(judge, instance, prompt, images, galleries)
        scores.extend(result)
        for image, hit in zip(images, result.recognised):
            cells.append((image, f"{prompt.text('*')} {'REC' if hit else '-'}"))
    return scores, SheetRow(label, cells)


def _side_orders(reading: Reading, row: int, pair) -> list[tuple[str, str]]:
    """The ways the pair's concepts can stand on the two sides: each on a side read as its category (both ways round
    when they share one; none when the judge does not see both categories)."""
    sides = {"left": reading.label("left", row), "right": reading.label("right", row)}
    return [
        order
        for order in (("left", "right"), ("right", "left"))
        if all(sides[side] == instance.category for side, (_, instance) in zip(order, pair))
    ]


def both_recognised(judge, galleries, images, pair) -> list[bool]:
    """Per image: the judge sees two objects whose categories are the two concepts', and some assignment of the
    concepts to the sides (each to a side read as its category; both ways when they share one) has each side's
    crop, as in a second-object prompt, recognised as its concept."""
    whole = judge.read(images)
    hits = []
    for row, image in enumerate(images):
        hits.append(
            whole.label("count", row) == 2
            and any(
                all(
                    galleries(instance, {}).recognised(judge.read([focus(image, side)]))[0]
                    for side, (_, instance) in zip(order, pair)
                )
                for order in _side_orders(whole, row, pair)
            )
        )
    return hits


def _own_looks(reading: Reading, instance) -> int:
    """How many of the instance's colour and pattern one object's crop shows (0-2)."""
    return (reading.label("colour", 0) == instance.colour_name) + (reading.label("pattern", 0) == instance.pattern)


def _took_from(reading: Reading, own, other) -> bool:
    """Whether one object's crop shows the other concept's body colour or (named) pattern where its own differs."""
    colour = reading.label("colour", 0)
    pattern = reading.label("pattern", 0)
    return (colour == other.colour_name != own.colour_name) or (
        pattern == other.pattern != own.pattern and other.pattern != "plain"
    )


def bleeding(judge, images, pair) -> list[bool | None]:
    """Per image of two concepts: whether either object shows the other concept's body colour or pattern where its
    own differs (one concept bleeding into the other), read on each side's crop; None where the judge does not see
    the two concepts' categories on two sides, so there is nothing to read. Two concepts of one category stand the
    way round whose sides show more of their own colour and pattern."""
    whole = judge.read(images)
    verdicts = []
    for row, image in enumerate(images):
        orders = _side_orders(whole, row, pair)
        if whole.label("count", row) != 2 or not orders:
            verdicts.append(None)
            continue
        crops = {side: judge.read([focus(image, side)]) for side in ("left", "right")}
        order = max(orders, key=lambda order: sum(_own_looks(crops[side], c) for side, (_, c) in zip(order, pair)))
        (first, (_, a)), (second, (_, b)) = zip(order, pair)
        verdicts.append(_took_from(crops[first], a, b) or _took_from(crops[second], b, a))
    return verdicts


def bleeding_share(verdicts: list[bool | None]) -> float:
    """The share of readable two-concept images in which one concept bled into the other (nan: none readable)."""
    readable = [verdict for verdict in verdicts if verdict is not None]
    return float(np.mean(readable)) if readable else float("nan")
