"""Perfusion's settings for the embedded micro-world model, where they differ from METHOD.md's SD1.5 recipe.

Measured on the embedded model's UNet at step 4000, example concept <mycat>, 8 world prompts x 2 seeds,
guidance 4, judge-scored (README, "Perfusion on the embedded model"): with the SD1.5 learning rate for o*_V
(3e-2) the value targets grow to 3-9x the norm of an ordinary token's value within 150 steps and the images
turn to noise whatever beta is (alignment 0.36 against 0.52 for the same prompts with the word "cat"); at 1e-2
alignment is 0.60 at beta 0.7 with identity top-1 0.75, and beta trades one for the other.
"""

from __future__ import annotations

from perfusion.train import TrainingConfig
from perfusion.world.basemodel.config import SamplingConfig

# Overrides of TrainingConfig (whose defaults are the SD1.5 recipe): 150 steps of 4 images take ~40 s on 2 cores.
TRAINING = dict(steps=150, batch_size=4, gradient_accumulation=1, lr_values=1e-2)
GUIDANCE = SamplingConfig.guidance_scale  # the base model's own, as its judge scores were measured


def training_config(**overrides) -> TrainingConfig:
    """The embedded model's training settings, with ``overrides`` on top."""
    return TrainingConfig(**{**TRAINING, **overrides})
