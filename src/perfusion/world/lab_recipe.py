"""Perfusion's settings for the embedded micro-world model, where they differ from docs/method.md's SD1.5 recipe.

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

from perfusion.recipes import read_recipe
from perfusion.training.trainer import TrainingConfig
from perfusion.world.basemodel.config import SamplingConfig
from perfusion.world.model_path import default_model_path

# The recipe lives with the model, in its perfusion_recipe.json (perfusion.recipes): what `perfusion train` and
# `generate` read. Its training part overrides TrainingConfig (whose defaults are the SD1.5 recipe): 300 steps of 4
# images take ~75 s on 2 cores; half the samples are paired images (perfusion.training.pairs) beside a category word; v* at
# 3e-4, 20x under SD1.5's 6e-3 (compare's perfusion-v-6e-3 keeps that): at 6e-3 v* ends at 2-3x a word embedding's
# norm and carries the identity past the gate, at 3e-4 it stays near a word's norm. The figures those choices were
# made by (the old judge's) are void; docs/recipe-search.md has what the honest judge shows.
_RECIPE = read_recipe(default_model_path())
TRAINING = {**_RECIPE.training, "pair_words": tuple(_RECIPE.training.get("pair_words", ()))}
EARLIER_LR_VALUES = 3e-3  # o*_V's rate on the epsilon-prediction models (step 8000 and before)
GUIDANCE = _RECIPE.generation.get("guidance_scale", SamplingConfig.guidance_scale)  # the base model's own
# Two concepts in one prompt: each denoised in its own region (perfusion.composition.regions).
COMPOSITION = _RECIPE.generation.get("composition", "regions")


def training_config(**overrides) -> TrainingConfig:
    """The embedded model's training settings, with ``overrides`` on top."""
    return _RECIPE.training_config(**overrides)
