"""Perfusion's settings for the embedded micro-world model, where they differ from METHOD.md's SD1.5 recipe.

Measured with example concept <mycat>, 8 world prompts x 2 seeds, guidance 4, judge-scored (README, "Perfusion
on the embedded model"). With SD1.5's learning rate for o*_V (3e-2), the value targets grew to 3-9x the norm of an
ordinary token's value within 150 steps. The images turned to noise whatever beta was: alignment 0.36, against
0.52 for the same prompts with the word "cat" (UNet step 4000). On the shipped model (step 8000), 300 steps at
3e-3 gave alignment 0.76, identity top-1 0.94 and fidelity 0.77. 150 steps at 1e-2 gave 0.75, 0.75 and 0.71, with
noisier images.
"""

from __future__ import annotations

from perfusion.train import TrainingConfig
from perfusion.world.basemodel.config import SamplingConfig

# Overrides of TrainingConfig (whose defaults are the SD1.5 recipe): 300 steps of 4 images take ~80 s on 2 cores.
TRAINING = dict(steps=300, batch_size=4, gradient_accumulation=1, lr_values=3e-3)
GUIDANCE = SamplingConfig.guidance_scale  # the base model's own, as its judge scores were measured


def training_config(**overrides) -> TrainingConfig:
    """The embedded model's training settings, with ``overrides`` on top."""
    return TrainingConfig(**{**TRAINING, **overrides})
