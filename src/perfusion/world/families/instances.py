"""Instances: one member of a family, as a vector of ground-truth parameters, and the parts of the space they are
drawn from.

    sample_training_instance("cat", rng)   # what the base model sees: never reserved, never near an example
    seen_instances("cat")                  # the 3 fixed members that recur in training (the seen-member control)
    evaluation_instance("cat", seed)       # a fresh member of the reserved part (tuning seeds 0-99, evaluation 1000+)
    stretch_instance("cat", seed)          # a colour or pattern the category never has in training

The reserved part is scattered through every family: an instance is reserved when the hash of its discretised
parameters falls in a fixed 10%. Training never samples it, so an instance drawn from it lies among the training
instances, as a user's own cat lies among the cats a model has seen.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from .categories import CATEGORIES, PATTERNS, category
from .palette import COLOURS, Colour, colour_distance, colour_name, sample_colour

RESERVED_SHARE = 0.10  # of the discretised parameter cells, never sampled in training
SHAPE_BINS = 4  # bins per shape parameter when hashing cells
EXAMPLE_EXCLUSION = 0.10  # training never samples within this normalised distance of a shipped example
SEEN_PER_CATEGORY = 3
SEEN_FIRST_SEED = 7_000  # seen instances are the first training-space instances drawn from these seeds
PLAIN_SHARE = 0.35  # of instances have no pattern
ACCESSORY_SHARE = 0.35  # of instances in a category with an accessory wear it


@dataclass(frozen=True)
class Instance:
    """One object's identity. Shape values follow CATEGORIES[category].shapes, each in [0, 1]."""

    category: str
    shape_values: tuple[float, ...]
    colour: Colour
    second_colour: Colour  # the pattern's colour
    pattern: str
    pattern_scale: float  # 0: fine stripes or small spots, 1: broad ones
    accessory: Colour | None = None  # the accessory's colour, if the instance wears it (collar, bow)

    def __post_init__(self):
        family = category(self.category)
        if len(self.shape_values) != len(family.shapes):
            raise ValueError(f"a {self.category} has {len(family.shapes)} shape values, got {len(self.shape_values)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; patterns: {', '.join(PATTERNS)}")
        if self.accessory is not None and family.accessory is None:
            raise ValueError(f"a {self.category} has no accessory")

    @property
    def family(self):
        return CATEGORIES[self.category]

    @property
    def shape(self) -> dict[str, float]:
        return dict(zip(self.family.shape_names, self.shape_values))

    @property
    def colour_name(self) -> str:
        return colour_name(self.colour)

    @property
    def second_colour_name(self) -> str:
        return colour_name(self.second_colour)

    @property
    def accessory_name(self) -> str | None:
        return None if self.accessory is None else colour_name(self.accessory)

    def cell(self) -> str:
        """The discretised parameters, as text: what the reserved hash reads."""
        shapes = "".join(str(min(SHAPE_BINS - 1, int(value * SHAPE_BINS))) for value in self.shape_values)
        second = self.second_colour_name if self.pattern != "plain" else "-"
        return f"{self.category}|{shapes}|{self.colour_name}|{self.pattern}|{second}|{self.accessory is not None}"

    @property
    def reserved(self) -> bool:
        digest = hashlib.sha256(self.cell().encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < RESERVED_SHARE

    def describe(self) -> str:
        """A short human-readable summary (not a caption)."""
        shapes = ", ".join(f"{name} {value:.2f}" for name, value in self.shape.items())
        pattern = (
            "plain"
            if self.pattern == "plain"
            else f"{self.second_colour_name} {self.pattern} ({self.pattern_scale:.2f})"
        )
        accessory = f", {self.accessory_name} {self.family.accessory}" if self.accessory else ""
        return f"{self.colour_name} {self.category}, {pattern}{accessory}; {shapes}"

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "shape": self.shape,
            "colour": list(self.colour),
            "second_colour": list(self.second_colour),
            "pattern": self.pattern,
            "pattern_scale": self.pattern_scale,
            "accessory": None if self.accessory is None else list(self.accessory),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Instance:
        family = category(values["category"])
        return cls(
            values["category"],
            tuple(float(values["shape"][name]) for name in family.shape_names),
            tuple(values["colour"]),
            tuple(values["second_colour"]),
            values["pattern"],
            float(values["pattern_scale"]),
            None if values.get("accessory") is None else tuple(values["accessory"]),
        )


def distance(first: Instance, second: Instance) -> float:
    """Normalised distance in [0, 1]: the root mean square over parameters of each one's difference as a share of
    its range (a colour's sRGB distance, 1 for another pattern or a missing accessory). Infinite across categories."""
    if first.category != second.category:
        return float("inf")
    terms = [abs(a - b) for a, b in zip(first.shape_values, second.shape_values)]
    terms.append(colour_distance(first.colour, second.colour))
    patterned = first.pattern != "plain" or second.pattern != "plain"
    terms.append(float(first.pattern != second.pattern))
    terms.append(colour_distance(first.second_colour, second.second_colour) if patterned else 0.0)
    terms.append(abs(first.pattern_scale - second.pattern_scale) if patterned else 0.0)
    if first.family.accessory is not None:
        if (first.accessory is None) != (second.accessory is None):
            terms.append(1.0)
        else:
            terms.append(0.0 if first.accessory is None else colour_distance(first.accessory, second.accessory))
    return (sum(term * term for term in terms) / len(terms)) ** 0.5


def _draw(name: str, rng: random.Random, colours=None, patterns=None) -> Instance:
    """One instance drawn freely from the category's ranges (or the given colour names and patterns)."""
    family = category(name)
    colours = colours or family.colours
    patterns = patterns or family.patterns
    shapes = tuple(rng.random() for _ in family.shapes)
    colour = sample_colour(colours, rng)
    body = colour_name(colour)
    second_names = tuple(c for c in family.second_colours if c != body) or tuple(c for c in COLOURS if c != body)
    second = sample_colour(second_names, rng)
    plain_first = "plain" in patterns and rng.random() < PLAIN_SHARE
    others = tuple(p for p in patterns if p != "plain")
    pattern = "plain" if plain_first or not others else rng.choice(others)
    accessory = None
    if family.accessory is not None and rng.random() < ACCESSORY_SHARE:
        accessory = sample_colour(tuple(c for c in COLOURS if c != body), rng)
    return Instance(name, shapes, colour, second, pattern, rng.random(), accessory)


def excluded(instance: Instance) -> bool:
    """True for instances training never samples: the reserved part and the neighbourhoods of the examples."""
    if instance.reserved:
        return True
    return any(distance(instance, example) < EXAMPLE_EXCLUSION for example in example_instances().values())


def sample_training_instance(name: str, rng: random.Random) -> Instance:
    """A fresh member of the family as training may show it."""
    while True:
        instance = _draw(name, rng)
        if not excluded(instance):
            return instance


def seen_instances(name: str) -> tuple[Instance, ...]:
    """The category's fixed seen members: training scenes show them again and again."""
    return _SEEN.setdefault(
        name,
        tuple(
            sample_training_instance(name, random.Random(SEEN_FIRST_SEED + 100 * CATEGORIES_ORDER[name] + index))
            for index in range(SEEN_PER_CATEGORY)
        ),
    )


def evaluation_instance(name: str, seed: int) -> Instance:
    """A member of the reserved part, by seed: never in training. Tune on seeds 0-99; evaluate on 1000 and up."""
    rng = random.Random(f"reserved/{name}/{seed}")
    while True:
        instance = _draw(name, rng)
        if instance.reserved:
            return instance


def stretch_instance(name: str, seed: int) -> Instance:
    """A member with one property outside the category's training range: a colour (even seeds) or a pattern (odd
    seeds) that training never gives this category. A category that uses every pattern always gets a colour."""
    family = category(name)
    rng = random.Random(f"stretch/{name}/{seed}")
    use_pattern = seed % 2 == 1 and family.stretch_patterns or not family.stretch_colours
    if use_pattern:
        return _draw(name, rng, patterns=tuple(p for p in family.stretch_patterns if p != "plain") or ("band",))
    return _draw(name, rng, colours=family.stretch_colours)


CATEGORIES_ORDER = {name: index for index, name in enumerate(CATEGORIES)}
_SEEN: dict[str, tuple[Instance, ...]] = {}


EXAMPLE_SEEDS = {"mycat": ("cat", 500), "mydog": ("dog", 500), "mymug": ("mug", 500), "myteddy": ("teddy", 500)}


@functools.cache
def example_instances() -> dict:
    """folder name -> Instance of each shipped example (perfusion.world.families.examples)."""
    return {folder: evaluation_instance(category, seed) for folder, (category, seed) in EXAMPLE_SEEDS.items()}
