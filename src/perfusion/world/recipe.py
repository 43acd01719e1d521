"""Perfusion's settings for the embedded micro-world model, where they differ from METHOD.md's SD1.5 recipe.

Every figure below was scored by the judge of before December 2026, which read colour and accepted noise squares as
the concept: they are void. With the current judge this recipe's concepts are recognised in 0 of 16 demo images
(docs/recipe-search.md, issue 22).

o*_V's learning rate is SD1.5's (3e-2); v*'s (3e-4, below), the batch (4 images, no accumulation), the step count
(300, ~75 s on 2 cores), the guidance (the base model's own) and paired images (below) differ. Measured with
benchmarks/compare.py, 12 world prompts x 2 seeds, judge-scored, on the shipped model (UNet step 15126) at guidance
4 without paired images: o*_V at 3e-2 gave <mycat> fidelity 0.82, alignment 0.94, top-1 1.00 and <mymug> 0.63 /
0.92 / 0.67, against 0.66 / 0.94 / 0.92 and 0.67 / 0.95 / 0.42 at 3e-3. The earlier epsilon-prediction models had
needed 3e-3 (at 3e-2 their images turned to noise); compare's ``perfusion-3e-3`` variant keeps that rate so the
difference stays measured.
"""

from __future__ import annotations

from perfusion.train import TrainingConfig
from perfusion.world.basemodel.config import SamplingConfig
from perfusion.world.catalog import CATEGORIES

# Overrides of TrainingConfig (whose defaults are the SD1.5 recipe): 300 steps of 4 images take ~75 s on 2 cores.
# Half the samples are paired images (perfusion.pairs) beside a category word. Judge, 16 images each, without -> with:
# "a dog next to <mymug>" 0 -> 3 with the beer mug found, "<mycat> next to a cup" 12 -> 13 with the black cat;
# <mycat>'s fidelity in the demo 0.86 -> 0.90 (at 0.8 instead of 0.5: 7 and 15 of 16; 450 steps: 11 and 13).
# v* at 3e-4, 20x under SD1.5's 6e-3 (compare's perfusion-v-6e-3 keeps that): at 6e-3 v* ends at 2-3x a word
# embedding's norm and carries the identity past the gate; at 3e-4 it stays near a word's norm. fidelity / alignment /
# top-1 at beta 0.7, 12 prompts x 2 seeds, 6e-3 -> 3e-4: <mycat> 0.87/0.90/1.00 -> 0.86/0.96/1.00, <mymug>
# 0.87/0.85/1.00 -> 0.85/0.97/1.00, <mydog> 0.89/0.80/1.00 -> 0.86/0.91/1.00, <mybird> 0.85/0.85/0.71 -> 0.81/0.93/0.75.
TRAINING = dict(steps=300, batch_size=4, gradient_accumulation=1, pair_probability=0.5, pair_words=CATEGORIES,
                lr_embedding=3e-4)
EARLIER_LR_VALUES = 3e-3  # o*_V's rate on the epsilon-prediction models (step 8000 and before)
GUIDANCE = SamplingConfig.guidance_scale  # the base model's own, as its judge scores were measured
# Two concepts in one prompt: each denoised in its own region (perfusion.regions). benchmarks/composition.py, the six
# pairs of the four example concepts x 16 images: both recognised in 45 of 96 images, against 20 with the joint edit.
COMPOSITION = "regions"


def training_config(**overrides) -> TrainingConfig:
    """The embedded model's training settings, with ``overrides`` on top."""
    return TrainingConfig(**{**TRAINING, **overrides})
