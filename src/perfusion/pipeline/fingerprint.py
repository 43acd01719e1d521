"""A pipeline's base-model fingerprint: what a concept's numbers depend on (its text encoders and the UNet's
cross-attention K/V projections), summarised by perfusion.concept.fingerprint, and whether a stored one is this
pipeline's, however its weights were opened."""

from __future__ import annotations

from perfusion.concept.fingerprint import base_model_fingerprint, base_model_tensors, fingerprints_match
from perfusion.pipeline.conditioning import TextConditioning


def pipeline_tensors(pipe) -> list:
    """What a concept's numbers depend on: the text encoders and the cross-attention K/V projections."""
    towers = TextConditioning.of(pipe).towers
    return base_model_tensors(
        [(tower.name, tower.text_encoder, tower.tokenizer.vocab_size) for tower in towers], pipe.unet
    )


def trained_on(pipe, fingerprint: str, current: str | None = None) -> bool:
    """Whether a concept or artifact with this base-model fingerprint was trained on this pipeline's base model,
    however its weights were opened (perfusion.concept.fingerprint); ``current``: the pipeline's own, if known."""
    return fingerprints_match(fingerprint, current or pipeline_fingerprint(pipe), lambda: pipeline_tensors(pipe))


def pipeline_fingerprint(pipe) -> str:
    towers = TextConditioning.of(pipe).towers
    return base_model_fingerprint(
        [(tower.name, tower.text_encoder, tower.tokenizer.vocab_size) for tower in towers], pipe.unet
    )
