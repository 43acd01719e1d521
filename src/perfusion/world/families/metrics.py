"""Is this image *that* instance? Recognition against a gallery, and attribute by attribute.

"Recognised" means: the judge accepts the image, reads the right category, and the concept ranks first in a
gallery of 10 instances of its category (itself, its 5 nearest neighbours in parameter space and 4 random ones),
each represented by 8 reference renders, ranked by the mean cosine of the identity embedding. Chance is 0.1.

Where a prompt changes an attribute on purpose ("a green <c>"), every gallery member is rendered with that change,
so that recognition reads the rest of the identity, and the attribute match leaves that attribute out.

    gallery = Gallery.build(instance, judge)
    hits = gallery.recognised(judge.read(images))            # list[bool]
    matches = attribute_match(reading, row, instance)       # {"colour": True, "shape:tail": False, ...}
    stated = stated_match(reading, row, instance)           # only what the verbal oracle says, in its words
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from .instances import Instance, _draw, distance
from .judge import Judge, Reading
from .scenes import photos

GALLERY_NEIGHBOURS = 5
GALLERY_RANDOM = 4
REFERENCE_RENDERS = 8
CANDIDATES = 2000  # instances of the category the neighbours are chosen from
SHAPE_TOLERANCE = 0.25  # a shape value read within this of the truth matches


def changed(instance: Instance, changes: dict | None) -> Instance:
    """The instance with attributes changed as a prompt asks (e.g. {"colour": (70, 160, 70)})."""
    return replace(instance, **changes) if changes else instance


@dataclass
class Gallery:
    concept: Instance
    members: list[Instance]  # the concept first
    references: torch.Tensor  # (members, REFERENCE_RENDERS, embedding_dim)

    @classmethod
    def build(cls, concept: Instance, judge: Judge, changes: dict | None = None, seed: int = 0) -> Gallery:
        rng = random.Random(f"gallery/{concept.category}/{seed}")
        candidates = [
            _draw(concept.category, random.Random(f"gallery/{concept.category}/{seed}/{index}"))
            for index in range(CANDIDATES)
        ]
        candidates = [c for c in candidates if distance(c, concept) > 0]
        by_distance = sorted(candidates, key=lambda c: distance(c, concept))
        neighbours = by_distance[:GALLERY_NEIGHBOURS]
        others = rng.sample(by_distance[GALLERY_NEIGHBOURS:], GALLERY_RANDOM)
        members = [concept, *neighbours, *others]
        images = [
            image
            for member in members
            for image, _, _ in photos(changed(member, changes), REFERENCE_RENDERS, seed=seed)
        ]
        embeddings = judge.read(images).embeddings.reshape(len(members), REFERENCE_RENDERS, -1)
        return cls(concept, members, embeddings)

    def scores(self, reading: Reading) -> torch.Tensor:
        """(images, members): each image's mean cosine to each member's reference renders."""
        return torch.einsum("nd,mrd->nmr", reading.embeddings, self.references).mean(-1)

    def ranks(self, reading: Reading) -> list[int]:
        """The concept's rank (0: first) for each image."""
        scores = self.scores(reading)
        return (scores > scores[:, :1]).sum(1).tolist()

    def recognised(self, reading: Reading) -> list[bool]:
        ranks = self.ranks(reading)
        return [
            reading.accepted(row) and reading.label("category", row) == self.concept.category and ranks[row] == 0
            for row in range(len(reading))
        ]


def without(matches: dict[str, bool], ignore: frozenset[str]) -> dict[str, bool]:
    """The matches less those in ``ignore``, by name or by kind ("shape" leaves out every "shape:..." match)."""
    return {name: hit for name, hit in matches.items() if name.split(":")[0] not in ignore and name not in ignore}


def attribute_match(
    reading: Reading, row: int, instance: Instance, ignore: frozenset[str] = frozenset()
) -> dict[str, bool]:
    """Which of the instance's attributes the judge reads in one image: the colour's and pattern's names, the
    pattern's colour (patterned instances), the accessory (categories that have one), and each shape value within
    SHAPE_TOLERANCE. Attributes in ``ignore`` (those a prompt changes) are left out."""
    matches = {
        "colour": reading.label("colour", row) == instance.colour_name,
        "pattern": reading.label("pattern", row) == instance.pattern,
    }
    if instance.pattern != "plain":
        matches["second_colour"] = reading.label("second_colour", row) == instance.second_colour_name
    if instance.family.accessory:
        matches["accessory"] = reading.label("accessory", row) == (instance.accessory is not None)
    shape = reading.shape(row, instance.category)
    for name, value in instance.shape.items():
        matches[f"shape:{name}"] = abs(shape[name] - value) <= SHAPE_TOLERANCE
    return without(matches, ignore)


def stated_match(
    reading: Reading, row: int, instance: Instance, ignore: frozenset[str] = frozenset()
) -> dict[str, bool]:
    """Which of the attributes the verbal oracle states (controls.verbal_description) the judge reads as stated: the
    colour's name, the pattern and its colour (patterned instances), the accessory (where the instance has one),
    and each shape parameter that has a word for its value, read in the same third (the word, not the value: fine
    values are never named). Attributes in ``ignore`` are left out."""
    matches = {"colour": reading.label("colour", row) == instance.colour_name}
    if instance.pattern != "plain":  # "plain" is left unsaid
        matches["pattern"] = reading.label("pattern", row) == instance.pattern
        matches["second_colour"] = reading.label("second_colour", row) == instance.second_colour_name
    if instance.accessory is not None:
        matches["accessory"] = bool(reading.label("accessory", row))
    shape = reading.shape(row, instance.category)
    for parameter in instance.family.shapes:
        words = parameter.words(instance.shape[parameter.name])
        if words:
            matches[f"shape:{parameter.name}"] = parameter.words(shape[parameter.name]) == words
    return without(matches, ignore)


def match_share(matches: list[dict[str, bool]]) -> float:
    """The mean share of attributes matched per image."""
    return float(np.mean([np.mean(list(m.values())) for m in matches])) if matches else float("nan")
