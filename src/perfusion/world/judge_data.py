"""Labelled batches of fresh renders for the judge: scenes from seeds (held-out objects included), labels per head."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from .catalog import POSITIONS, SIZES
from .judge_model import BACKGROUND_NAMES, COUNTS, NOTHING, OBJECT_CLASSES, OBJECT_NAMES
from .negatives import KINDS
from .render import render_layers
from .scenes import SamplingConfig, SceneSpec, sample_spec

IGNORE = -100  # label of a head that does not apply to a scene (cross_entropy's ignore_index)
TRAIN_SEEDS = 0  # training batch b uses seeds from TRAIN_SEEDS + b * batch_size
EVAL_SEEDS = 1_900_000_000  # evaluation scenes: a seed range that training never reaches


Negatives = tuple[str | None, ...]  # per object of a scene: a kind of perfusion.world.negatives, or None (the glyph)


def shown(spec: SceneSpec, negatives: Negatives = ()) -> tuple[str, ...]:
    """What a person would name for each object of the scene: its name, or NOTHING where a negative replaces it."""
    return tuple(
        NOTHING if index < len(negatives) and negatives[index] else name for index, name in enumerate(spec.objects)
    )


def spec_labels(spec: SceneSpec, negatives: Negatives = ()) -> dict[str, int]:
    """The class index of each head for one scene (IGNORE where a head does not apply)."""
    pair = spec.second_object is not None
    names = shown(spec, negatives)
    left, right = (names if spec.position == "left" else names[::-1]) if pair else (None, None)
    return {
        "object": IGNORE if pair else OBJECT_CLASSES.index(names[0]),
        "background": BACKGROUND_NAMES.index(spec.background),
        "position": IGNORE if pair else POSITIONS.index(spec.position),
        "size": SIZES.index(spec.size),
        "count": COUNTS.index(len(spec.objects)),
        "left_object": OBJECT_CLASSES.index(left) if pair else IGNORE,
        "right_object": OBJECT_CLASSES.index(right) if pair else IGNORE,
    }


def images_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images -> (N, 3, H, W) float in [0, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


def labelled_batch(
    specs: Sequence[SceneSpec], negatives: Sequence[Negatives] | None = None, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rendered images and their labels, including a multi-hot "present" target (negatives are not present).
    ``negatives`` gives each scene's negatives (default: none); ``seed`` draws their randomness."""
    negatives = list(negatives) if negatives is not None else [()] * len(specs)
    labels = [spec_labels(spec, kinds) for spec, kinds in zip(specs, negatives)]
    targets = {name: torch.tensor([label[name] for label in labels]) for name in labels[0]}
    present = torch.zeros(len(specs), len(OBJECT_NAMES))
    for row, (spec, kinds) in enumerate(zip(specs, negatives)):
        present[row, [OBJECT_NAMES.index(name) for name in shown(spec, kinds) if name != NOTHING]] = 1.0
    targets["present"] = present
    rng = random.Random(seed)
    images = [render_layers(spec, negatives=kinds, rng=rng)[0] for spec, kinds in zip(specs, negatives)]
    return images_tensor(images), targets


def draw_negatives(
    specs: Sequence[SceneSpec], share: float, seed: int, kinds: Sequence[str] = KINDS
) -> list[Negatives]:
    """For each scene, with probability ``share``, one or (in a pair, half the time) both objects replaced by a
    negative of a random kind."""
    rng = random.Random(seed)
    drawn = []
    for spec in specs:
        if rng.random() >= share:
            drawn.append(())
            continue
        count = len(spec.objects)
        chosen = set(range(count)) if count == 2 and rng.random() < 0.5 else {rng.randrange(count)}
        drawn.append(tuple(rng.choice(kinds) if index in chosen else None for index in range(count)))
    return drawn


JUDGE_SAMPLING = SamplingConfig(
    second_object=0.35
)  # more two-object scenes than the world's 0.25: their heads learn slower


def specs_from_seeds(seeds: Sequence[int], sampling: SamplingConfig = JUDGE_SAMPLING) -> list[SceneSpec]:
    """One scene per seed, held-out objects included."""
    return [sample_spec(random.Random(seed), include_held_out=True, config=sampling) for seed in seeds]
