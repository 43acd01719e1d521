"""Labelled batches of fresh renders for the judge: scenes from seeds (held-out objects included), labels per head."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from .judge_model import BACKGROUND_NAMES, COUNTS, OBJECT_NAMES
from .catalog import POSITIONS, SIZES
from .scenes import SamplingConfig, SceneSpec, render, sample_spec

IGNORE = -100  # label of a head that does not apply to a scene (cross_entropy's ignore_index)
TRAIN_SEEDS = 0  # training batch b uses seeds from TRAIN_SEEDS + b * batch_size
EVAL_SEEDS = 1_900_000_000  # evaluation scenes: a seed range that training never reaches


def spec_labels(spec: SceneSpec) -> dict[str, int]:
    """The class index of each head for one scene (IGNORE where a head does not apply)."""
    pair = spec.second_object is not None
    left, right = (spec.object, spec.second_object) if spec.position == "left" else (spec.second_object, spec.object)
    return {
        "object": IGNORE if pair else OBJECT_NAMES.index(spec.object),
        "background": BACKGROUND_NAMES.index(spec.background),
        "position": IGNORE if pair else POSITIONS.index(spec.position),
        "size": SIZES.index(spec.size),
        "count": COUNTS.index(len(spec.objects)),
        "left_object": OBJECT_NAMES.index(left) if pair else IGNORE,
        "right_object": OBJECT_NAMES.index(right) if pair else IGNORE,
    }


def images_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images -> (N, 3, H, W) float in [0, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


def labelled_batch(specs: Sequence[SceneSpec]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rendered images and their labels, including a multi-hot "present" target."""
    labels = [spec_labels(spec) for spec in specs]
    targets = {name: torch.tensor([label[name] for label in labels]) for name in labels[0]}
    present = torch.zeros(len(specs), len(OBJECT_NAMES))
    for row, spec in enumerate(specs):
        present[row, [OBJECT_NAMES.index(name) for name in spec.objects]] = 1.0
    targets["present"] = present
    return images_tensor([render(spec) for spec in specs]), targets


JUDGE_SAMPLING = SamplingConfig(second_object=0.35)  # more two-object scenes than the world's 0.25: their heads learn slower


def specs_from_seeds(seeds: Sequence[int], sampling: SamplingConfig = JUDGE_SAMPLING) -> list[SceneSpec]:
    """One scene per seed, held-out objects included."""
    return [sample_spec(random.Random(seed), include_held_out=True, config=sampling) for seed in seeds]
