"""Drawing images from a pipeline for the laboratory's measurements: one image per (prompt, seed), batched, each
image's noise from its own seed, with the base model's sampling settings."""

from __future__ import annotations

import functools

import torch


@functools.cache
def model_guidance() -> float:
    """The laboratory model's own guidance: its folder's recipe's (what `perfusion generate` uses), else
    SamplingConfig's; read once."""
    from perfusion.recipes import read_recipe
    from perfusion.world.basemodel.config import SamplingConfig
    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    return read_recipe(FAMILIES_MODEL_DIR).generation.get("guidance_scale", SamplingConfig.guidance_scale)


def sampling_defaults(steps: int | None, guidance: float | None) -> tuple[int, float]:
    """``steps`` and ``guidance``, or where None the laboratory model's own (SamplingConfig's steps, model_guidance)."""
    from perfusion.world.basemodel.config import SamplingConfig

    return (
        SamplingConfig.num_inference_steps if steps is None else steps,
        model_guidance() if guidance is None else guidance,
    )


@torch.no_grad()
def generate_images(
    pipe,
    texts: list[str],
    seeds: list[int],
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
) -> list:
    """Images in the order (text 0, seed 0), (text 0, seed 1), ..."""
    steps, guidance = sampling_defaults(steps, guidance)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(text, seed) for text in texts for seed in seeds]
    images = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        images += pipe(
            [text for text, _ in batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed) for _, seed in batch],
        ).images
    return images
