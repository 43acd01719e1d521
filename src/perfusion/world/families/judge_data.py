"""Labelled images for the families judge: fresh renders with their ground truth, and things that are not objects.

A batch holds pairs of views of the same instance (another pose, ground, position and size) for the identity
embedding, near neighbours of some of those instances (the same instance, changed a little: they must embed
apart), two-object scenes, and negatives: an object's sprite replaced by its colours without its shape
(`perfusion.world.negatives`: tile shuffles, noise squares, blobs, heavy blur, fragments).

The judge trains on instances outside the reserved part (stretch colours and patterns included, so that it can
read "a green cat"); it is validated on reserved instances it never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from perfusion.world.negatives import KINDS, negative_sprite

from .categories import ALL_COLOURS, CATEGORY_NAMES, PATTERNS
from .instances import Instance, _draw, evaluation_instance
from .judge_net import HEAD_CLASSES, NOTHING, PATTERN_SCALE, REGRESSION_OUTPUTS, SHAPE_SLICES
from .palette import BACKGROUND_TEXTURES, colour_name
from .scenes import POSITIONS, SIZES, SceneSpec, pick_background, render_with_mask, sample_placement

IGNORE = -100


@dataclass(frozen=True)
class BatchRecipe:
    """What one judge batch holds."""

    identity_instances: int = 32  # each rendered twice
    neighbours: int = 12  # of those, instances that are a near neighbour of another one in the batch
    pairs: int = 16  # two-object scenes
    negatives: int = 24  # one-object scenes whose object is replaced by its colours without its shape
    stretch: float = 0.15  # share of instances with a colour or pattern outside the category's range
    small: float = 0.2  # share of one-object views drawn small


@dataclass
class LabelledBatch:
    images: torch.Tensor  # (N, 3, 64, 64) in [0, 1]
    targets: dict[str, torch.Tensor]  # head -> (N,) class index or IGNORE
    regression: torch.Tensor  # (N, REGRESSION_OUTPUTS)
    regression_mask: torch.Tensor  # (N, REGRESSION_OUTPUTS) bool: which values are known
    identity: torch.Tensor  # (N,) instance index within the batch, -1 for images without one


def free_instance(rng: random.Random, name: str | None = None, stretch: float = 0.0) -> Instance:
    """An instance outside the reserved part, of any colour or pattern the judge must read."""
    name = name or rng.choice(CATEGORY_NAMES)
    while True:
        if rng.random() < stretch:
            instance = _draw(name, rng, colours=ALL_COLOURS, patterns=PATTERNS)
        else:
            instance = _draw(name, rng)
        if not instance.reserved:
            return instance


def neighbour(instance: Instance, rng: random.Random, spread: float = 0.25) -> Instance:
    """The same instance changed a little: one to three shape values moved, or the shade, or the pattern's scale."""
    shapes = list(instance.shape_values)
    for index in rng.sample(range(len(shapes)), k=min(len(shapes), rng.randint(1, 3))):
        shapes[index] = min(1.0, max(0.0, shapes[index] + rng.choice((-1, 1)) * rng.uniform(spread / 2, spread)))
    colour = instance.colour
    if rng.random() < 0.4:
        shifted = tuple(int(min(255, max(0, c + rng.uniform(-40, 40)))) for c in colour)
        colour = shifted if colour_name(shifted) == instance.colour_name else colour
    scale = instance.pattern_scale
    if rng.random() < 0.4:
        scale = min(1.0, max(0.0, scale + rng.choice((-1, 1)) * rng.uniform(0.2, 0.4)))
    return replace(instance, shape_values=tuple(shapes), colour=colour, pattern_scale=scale)


def one_object_spec(instance: Instance, rng: random.Random, small: float = 0.2) -> SceneSpec:
    return SceneSpec(
        first=sample_placement(instance, rng),
        background=pick_background(rng, (instance,)),
        position=rng.choice(POSITIONS),
        size="small" if rng.random() < small else rng.choice(("medium", "large")),
        texture=rng.choice(BACKGROUND_TEXTURES),
        texture_angle=rng.uniform(0.0, 360.0),
        texture_seed=rng.randrange(2**31),
    )


def pair_spec(first: Instance, second: Instance, rng: random.Random) -> SceneSpec:
    return SceneSpec(
        first=sample_placement(first, rng),
        second=sample_placement(second, rng),
        background=pick_background(rng, (first, second)),
        position=rng.choice(("left", "right")),
        size=rng.choice(SIZES),
        texture=rng.choice(BACKGROUND_TEXTURES),
        texture_angle=rng.uniform(0.0, 360.0),
        texture_seed=rng.randrange(2**31),
    )


def _index(head: str, value) -> int:
    return HEAD_CLASSES[head].index(value)


def instance_labels(instance: Instance, placement) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """The identity-branch labels of one object (IGNORE where a head does not apply), and its regression targets."""
    family = instance.family
    patterned = instance.pattern != "plain"
    labels = {
        "accept": 1,
        "category": _index("category", instance.category),
        "colour": _index("colour", instance.colour_name),
        "second_colour": _index("second_colour", instance.second_colour_name) if patterned else IGNORE,
        "pattern": _index("pattern", instance.pattern),
        "accessory": int(instance.accessory is not None) if family.accessory else IGNORE,
        "accessory_colour": _index("accessory_colour", instance.accessory_name) if instance.accessory else IGNORE,
        "pose": _index("pose", placement.pose) if len(family.poses) > 1 else IGNORE,
        "facing": _index("facing", placement.facing),
    }
    values = np.zeros(REGRESSION_OUTPUTS, dtype=np.float32)
    known = np.zeros(REGRESSION_OUTPUTS, dtype=bool)
    values[SHAPE_SLICES[instance.category]] = instance.shape_values
    known[SHAPE_SLICES[instance.category]] = True
    if patterned:
        values[PATTERN_SCALE], known[PATTERN_SCALE] = instance.pattern_scale, True
    return labels, values, known


def one_object_labels(spec: SceneSpec) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Every head's target for a one-object scene of an object (IGNORE where a head does not apply), and its
    regression targets with which are known."""
    labels, values, known = instance_labels(spec.first.instance, spec.first)
    scene = {
        "background": _index("background", spec.background),
        "size": _index("size", spec.size),
        "position": _index("position", spec.position),
        "count": 0,
    }
    return {**{head: IGNORE for head in HEAD_CLASSES}, **labels, **scene}, values, known


def _negative_filter(kinds: tuple[str | None, ...], rng: random.Random):
    def replace_sprite(index, sprite):
        kind = kinds[index] if index < len(kinds) else None
        return sprite if kind is None else negative_sprite(sprite, kind, rng)

    return replace_sprite


def labelled_batch(rng: random.Random, recipe: BatchRecipe = BatchRecipe(), instances=None) -> LabelledBatch:
    """One batch by `recipe`; ``instances`` (a list of Instance) replaces the freshly drawn identity instances."""
    images, rows, values, knowns, identity = [], [], [], [], []
    empty = {head: IGNORE for head in HEAD_CLASSES}

    def add(spec: SceneSpec, labels: dict, value, known, group: int, kinds=()):
        image, _ = render_with_mask(spec, _negative_filter(kinds, rng) if kinds else None)
        images.append(np.asarray(image))
        rows.append(
            {**empty, "background": _index("background", spec.background), "size": _index("size", spec.size), **labels}
        )
        values.append(value)
        knowns.append(known)
        identity.append(group)

    if instances is None:
        count = recipe.identity_instances - recipe.neighbours
        instances = [free_instance(rng, stretch=recipe.stretch) for _ in range(count)]
        instances += [neighbour(rng.choice(instances[:count]), rng) for _ in range(recipe.neighbours)]
    for group, instance in enumerate(instances):
        for _ in range(2):
            spec = one_object_spec(instance, rng, recipe.small)
            add(spec, *one_object_labels(spec), group)
    nothing = np.zeros(REGRESSION_OUTPUTS, dtype=np.float32), np.zeros(REGRESSION_OUTPUTS, dtype=bool)
    for _ in range(recipe.pairs):
        first, second = rng.sample(CATEGORY_NAMES, 2)
        spec = pair_spec(free_instance(rng, first), free_instance(rng, second), rng)
        kinds = tuple(rng.choice(KINDS) if rng.random() < 0.15 else None for _ in range(2))
        names = [NOTHING if kind else instance.category for kind, instance in zip(kinds, spec.instances)]
        left, right = names if spec.position == "left" else names[::-1]
        add(spec, {"count": 1, "left": _index("left", left), "right": _index("right", right)}, *nothing, -1, kinds)
    for _ in range(recipe.negatives):
        spec = one_object_spec(free_instance(rng, stretch=recipe.stretch), rng, recipe.small)
        add(
            spec,
            {"accept": 0, "count": 0, "position": _index("position", spec.position)},
            *nothing,
            -1,
            (rng.choice(KINDS),),
        )
    return LabelledBatch(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0,
        targets={head: torch.tensor([row[head] for row in rows], dtype=torch.long) for head in HEAD_CLASSES},
        regression=torch.from_numpy(np.stack(values)),
        regression_mask=torch.from_numpy(np.stack(knowns)),
        identity=torch.tensor(identity, dtype=torch.long),
    )


def validation_instances(count_per_category: int, first_seed: int = 2_000_000) -> list[Instance]:
    """Reserved instances the judge never trains on (seeds far from tuning and evaluation ranges)."""
    return [
        evaluation_instance(name, first_seed + index) for name in CATEGORY_NAMES for index in range(count_per_category)
    ]
