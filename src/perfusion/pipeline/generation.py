"""Generating with loaded concepts: per-concept gate settings, key-locking mode, seeds."""

from __future__ import annotations

import operator
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from perfusion.composition.regions import MODES
from perfusion.pipeline.loader import loaded_tokens
from perfusion.pipeline.settings import GenerationError, check_gate, check_loaded, concept_settings
from perfusion.pipeline.text import cut_off_tokens, prompt_tokens

__all__ = ["GenerationConfig", "GenerationError", "check_gate", "check_prompt", "generate"]


@dataclass
class GenerationConfig:
    """One generation call's settings; field names follow the diffusers pipeline's own arguments."""

    num_inference_steps: int = 25
    guidance_scale: float | None = None  # None: the pipeline's own (7.5 on SD 1.x and 2.x, 5.0 on SDXL)
    num_images_per_prompt: int = 1
    seed: int | list[int] = 0  # a list: one seed for each image (prompts x num_images_per_prompt, prompt by prompt)
    # None keeps the pipeline's own setting (set_global_lock, set_composition; off and "joint" until set)
    global_lock: bool | None = None  # keys read the prompt with concepts replaced by their supercategory
    composition: str | None = (
        None  # "joint" or "regions": each concept denoised in its own region (perfusion.composition.regions)
    )
    regions: dict | None = None  # RegionsConfig's fields with composition "regions" (layout, threshold, min_concepts)
    height: int | None = None  # pixels, a multiple of 8; None: the pipeline's own (its UNet's sample size)
    width: int | None = None

    def __post_init__(self):
        if self.num_inference_steps < 1 or self.num_images_per_prompt < 1:
            raise GenerationError("num_inference_steps and num_images_per_prompt must be at least 1")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise GenerationError(f"guidance_scale must not be negative, got {self.guidance_scale}")
        if self.composition is not None and self.composition not in MODES:
            raise GenerationError(f"composition must be one of {', '.join(MODES)}, got {self.composition!r}")
        if self.regions and self.composition != "regions":
            raise GenerationError('regions settings need composition="regions"')
        self.height = None if self.height is None else pixel_size("height", self.height)
        self.width = None if self.width is None else pixel_size("width", self.width)


def pixel_size(name: str, given) -> int:
    """A height or width: an integer multiple of 8, as diffusers' pipelines check (numpy integers too; not 512.0)."""
    try:
        size = None if isinstance(given, bool) else operator.index(given)
    except TypeError:
        size = None
    if size is None or size < 8 or size % 8:
        raise GenerationError(f"{name} must be a positive multiple of 8 (pixels), got {given!r}")
    return size


PROMPT_ARGUMENTS = ("prompt_2", "negative_prompt", "negative_prompt_2")  # diffusers' other prompt texts (SDXL's _2)


def check_prompt(pipe, prompt: str) -> None:
    """Every <token> in the prompt must be a loaded concept (or another word the tokenizer knows), spelt exactly:
    a token in other capitals is refused with the loaded one suggested. A concept that the text encoder's length
    limit cuts off gets a UserWarning (the prompt still generates, without it)."""
    loaded = loaded_tokens(pipe)
    known = set(loaded) | set(pipe.tokenizer.get_vocab())
    unknown = [token for token in prompt_tokens(prompt) if token not in known]
    if unknown:
        token = unknown[0]
        same_letters = [name for name in loaded if name.lower() == token.lower()]
        hint = f": concept tokens are case-sensitive, did you mean {same_letters[0]}?" if same_letters else ""
        listing = ", ".join(loaded) or "none"
        raise GenerationError(f"unknown token {token} in the prompt{hint} (loaded concepts: {listing})")
    used = [token for token in prompt_tokens(prompt) if token in loaded]
    limit = pipe.tokenizer.model_max_length
    for token, (cut, total) in cut_off_tokens(pipe.tokenizer, prompt, used).items():
        which = f"{token}" if cut == total else f"{cut} of the {total} {token}"
        kept = total - cut
        effect = (
            "the concept will not be in the image"
            if not kept
            else "only the first one still acts"
            if kept == 1
            else f"only the first {kept} still act"
        )
        warnings.warn(
            f"{which} falls past the text encoder's limit of {limit} tokens and was cut off: {effect}; "
            f"shorten the prompt or move {token} earlier",
            UserWarning,
            stacklevel=2,
        )


def generate(pipe, prompt: str | list[str], config: GenerationConfig | None = None, settings=None, **pipeline_kwargs):
    """Images for ``prompt`` (PIL list, prompt by prompt); ``settings`` maps a concept token to (beta, tau), None
    keeping its own, or is a list of such maps, one for each prompt of a list (a batch of prompts at their own gates,
    in one pipeline call).

    The settings of ``config`` and ``settings`` apply to this call only: the pipeline's own come back after it.
    """
    config = config or GenerationConfig()
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise GenerationError("no prompt given")
    given = {
        name: value
        for name, value in (
            ("height", config.height),
            ("width", config.width),
            ("guidance_scale", config.guidance_scale),
        )
        if value is not None
    }
    if set(given) & set(pipeline_kwargs):
        raise GenerationError(
            f"{min(set(given) & set(pipeline_kwargs))} given twice: in the config and as a pipeline argument"
        )
    factor = getattr(pipe, "vae_scale_factor", 8)
    for name in {"height", "width"} & set(given):
        if given[name] % factor:
            raise GenerationError(f"{name} must be a multiple of {factor} for this pipeline's VAE, got {given[name]}")
    for text in prompts:
        check_prompt(pipe, text)
    for name in PROMPT_ARGUMENTS:  # the pipeline's other prompts, when given as text
        given_texts = pipeline_kwargs.get(name)
        for text in [given_texts] if isinstance(given_texts, str) else given_texts or []:
            if isinstance(text, str):
                check_prompt(pipe, text)
    loaded = loaded_tokens(pipe)
    per_prompt = isinstance(settings, (list, tuple))
    if per_prompt and len(settings) != len(prompts):
        raise GenerationError(f"settings for {len(settings)} prompts, but {len(prompts)} prompts given")
    maps = [entry or {} for entry in settings] if per_prompt else [settings or {}]
    for entry in maps:
        check_loaded(entry, loaded)
    generator = generators(config.seed, len(prompts) * config.num_images_per_prompt)
    beta = [{token: beta for token, (beta, _) in entry.items()} for entry in maps]
    tau = [{token: tau for token, (_, tau) in entry.items()} for entry in maps]
    scope = nullcontext()
    if loaded:  # the call's settings (checked there), put back afterwards
        scope = concept_settings(
            pipe,
            beta=beta if per_prompt else beta[0],
            tau=tau if per_prompt else tau[0],
            global_lock=config.global_lock,
            composition=config.composition,
            regions=config.regions,
        )
    with scope:
        return pipe(
            prompt if isinstance(prompt, str) else prompts,
            num_inference_steps=config.num_inference_steps,
            num_images_per_prompt=config.num_images_per_prompt,
            generator=generator,
            **given,
            **pipeline_kwargs,
        ).images


def generators(seed: int | list[int], images: int):
    """CPU generators (the same images on every device): one for the call, or one per image from a list of seeds."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != images:
            raise GenerationError(f"{len(seed)} seeds for {images} images: give one seed per image")
        return [torch.Generator().manual_seed(int(value)) for value in seed]
    return torch.Generator().manual_seed(seed)
