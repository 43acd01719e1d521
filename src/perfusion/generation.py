"""Generating with loaded concepts: per-concept gate settings, key-locking mode, seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perfusion.loader import loaded_tokens, set_composition, set_concept_options, set_global_lock
from perfusion.text import prompt_tokens

BETA_RANGE = (0.0, 1.0)  # s(i*) = 1, s(unrelated) ~ 0: a threshold outside [0, 1] opens or closes every gate
TAU_RANGE = (0.0, 1.0)  # exclusive below: tau is a temperature


class GenerationError(ValueError):
    """A prompt or setting that cannot be generated."""


@dataclass
class GenerationConfig:
    steps: int = 25
    guidance: float = 7.5
    num_images: int = 1
    seed: int = 0
    # None keeps the pipeline's own setting (set_global_lock, set_composition; off and "joint" until set)
    global_lock: bool | None = None  # keys read the prompt with concepts replaced by their supercategory
    composition: str | None = None  # "joint" or "regions": each concept denoised in its own region (perfusion.regions)
    regions: dict | None = None  # RegionsConfig's fields with composition "regions" (layout, threshold, min_concepts)


def check_gate(beta: float | None, tau: float | None) -> None:
    if beta is not None and not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
        raise GenerationError(f"beta must be in [{BETA_RANGE[0]}, {BETA_RANGE[1]}], got {beta}")
    if tau is not None and not TAU_RANGE[0] < tau <= TAU_RANGE[1]:
        raise GenerationError(f"tau must be in ({TAU_RANGE[0]}, {TAU_RANGE[1]}], got {tau}")


def check_prompt(pipe, prompt: str) -> None:
    """Every <token> in the prompt must be a loaded concept (or another word the tokenizer knows)."""
    known = set(loaded_tokens(pipe)) | set(pipe.tokenizer.get_vocab())
    unknown = [token for token in prompt_tokens(prompt) if token not in known]
    if unknown:
        loaded = ", ".join(loaded_tokens(pipe)) or "none"
        raise GenerationError(f"unknown token {unknown[0]} in the prompt (loaded concepts: {loaded})")


def configure(pipe, settings: dict[str, tuple[float | None, float | None]], config: GenerationConfig) -> None:
    """Apply per-concept (beta, tau), the key-locking mode and the composition mode; None keeps a concept's own
    default."""
    for token, (beta, tau) in settings.items():
        check_gate(beta, tau)
        set_concept_options(pipe, token, beta=beta, tau=tau)
    if config.global_lock is not None:
        set_global_lock(pipe, config.global_lock)
    if config.regions and config.composition != "regions":
        raise GenerationError('regions settings need composition="regions"')
    if config.composition is not None:
        try:
            set_composition(pipe, config.composition, **(config.regions or {}))
        except (ValueError, TypeError) as error:
            raise GenerationError(str(error)) from None


def generate(pipe, prompt: str, config: GenerationConfig | None = None, settings=None, **pipeline_kwargs):
    """Images for ``prompt`` (PIL list); ``settings`` maps a concept token to (beta, tau)."""
    config = config or GenerationConfig()
    check_prompt(pipe, prompt)
    if loaded_tokens(pipe):
        configure(pipe, settings or {}, config)
    generator = torch.Generator().manual_seed(config.seed)  # CPU generator: the same images on every device
    return pipe(
        prompt,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        num_images_per_prompt=config.num_images,
        generator=generator,
        **pipeline_kwargs,
    ).images
