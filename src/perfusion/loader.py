"""Loading concepts into a diffusers pipeline and taking them out again (the load_*/unload_* pair)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from perfusion.concept import Concept, ConceptFileError
from perfusion import covariance
from perfusion.fingerprint import base_model_fingerprint, cross_attention_modules
from perfusion.processor import PerfusionAttnProcessor
from perfusion.runtime import PerfusionRuntime


def find_runtime(pipe) -> PerfusionRuntime | None:
    for processor in pipe.unet.attn_processors.values():
        if isinstance(processor, PerfusionAttnProcessor):
            return processor.runtime
    return None


def pipeline_fingerprint(pipe) -> str:
    return base_model_fingerprint(pipe.text_encoder, pipe.unet, pipe.tokenizer.vocab_size)


@contextmanager
def embedding_frozen_state_kept(text_encoder):
    """Resizing the token embedding makes a new, trainable weight: keep a frozen encoder frozen."""
    requires_grad = text_encoder.get_input_embeddings().weight.requires_grad
    yield
    text_encoder.get_input_embeddings().weight.requires_grad_(requires_grad)


def install(pipe, captions=None, progress: bool = False, inverse: torch.Tensor | None = None,
            fingerprint: str | None = None) -> PerfusionRuntime:  # fmt: skip
    """Put the edit processors on every cross-attention layer (self-attention keeps its own) and attach hooks."""
    runtime = find_runtime(pipe)
    if runtime is not None:
        return runtime
    if inverse is None:
        inverse = covariance.inverse_covariance(pipe.text_encoder, pipe.tokenizer, captions, progress=progress)
    runtime = PerfusionRuntime(pipe.text_encoder, pipe.tokenizer, inverse, fingerprint or pipeline_fingerprint(pipe))
    layers = cross_attention_modules(pipe.unet)
    processors = {
        name: PerfusionAttnProcessor(processor, runtime, name.removesuffix(".processor"))
        if name.removesuffix(".processor") in layers
        else processor
        for name, processor in pipe.unet.attn_processors.items()
    }
    pipe.unet.set_attn_processor(processors)
    runtime.attach(pipe.text_encoder, pipe.unet)
    return runtime


def check_compatible(concept: Concept, fingerprint: str, pipe, source: str) -> None:
    if concept.base_fingerprint != fingerprint:
        raise ConceptFileError(
            f"{source}: trained on another base model (fingerprint {concept.base_fingerprint[:12]}, "
            f"this pipeline is {fingerprint[:12]})"
        )
    layers = set(cross_attention_modules(pipe.unet))
    if set(concept.value_targets) != layers:
        raise ConceptFileError(f"{source}: its layers do not match this pipeline's cross-attention layers")


def load_concepts(
    pipe,
    concepts,
    *,
    captions: list[str] | None = None,
    inverse_covariance: torch.Tensor | None = None,
    progress: bool = False,
    check: bool = True,
) -> list[Concept]:
    """Load concept files (paths or ``Concept`` objects) into ``pipe``; their tokens become usable in prompts.

    ``captions`` replaces the packaged corpus for estimating C (computed once per base model, then cached);
    ``inverse_covariance`` gives C^-1 directly.
    """
    if isinstance(concepts, (str, Path, Concept)):
        concepts = [concepts]
    loaded = [(item, f"concept {item.token}") if isinstance(item, Concept) else (Concept.load(item), str(item)) for item in concepts]
    runtime = find_runtime(pipe)
    fingerprint = runtime.base_fingerprint if runtime is not None else pipeline_fingerprint(pipe)
    taken = set(runtime.concepts) if runtime is not None else set()
    for concept, source in loaded:  # refuse bad files before the (slow) covariance and before any change to pipe
        if check:
            check_compatible(concept, fingerprint, pipe, source)
        if concept.token in taken:
            raise ConceptFileError(f"{source}: the token {concept.token} is already loaded")
        if concept.token in pipe.tokenizer.get_vocab():
            raise ConceptFileError(f"{source}: the token {concept.token} is already a word of this tokenizer")
        taken.add(concept.token)
    runtime = install(pipe, captions, progress, inverse_covariance, fingerprint)
    device = pipe.unet.device
    for concept, source in loaded:
        embedding = concept.token_embedding.detach().to(pipe.text_encoder.dtype)
        with embedding_frozen_state_kept(pipe.text_encoder):
            pipe.load_textual_inversion(embedding, token=concept.token, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
        runtime.add(installed_copy(concept, device))
    return [concept for concept, _ in loaded]


def installed_copy(concept: Concept, device) -> Concept:
    """The runtime's own copy of a caller's concept (value targets on the UNet's device); the caller's is untouched."""
    return replace(concept, value_targets={layer: target.detach().to(device, copy=True) for layer, target in concept.value_targets.items()},
                   training=dict(concept.training))  # fmt: skip


def unload_concepts(pipe, tokens: str | list[str] | None = None) -> None:
    """Remove concepts (all by default); with none left, restore the stock processors and drop the hooks."""
    runtime = find_runtime(pipe)
    if runtime is None:
        return
    tokens = list(runtime.concepts) if tokens is None else [tokens] if isinstance(tokens, str) else list(tokens)
    for token in tokens:
        if token not in runtime.concepts:
            raise KeyError(f"{token} is not loaded")
    if tokens:
        with embedding_frozen_state_kept(pipe.text_encoder):
            pipe.unload_textual_inversion(tokens, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    for token in tokens:
        runtime.remove(token)
    if not runtime.concepts:
        runtime.detach()
        originals = {
            name: processor.original if isinstance(processor, PerfusionAttnProcessor) else processor
            for name, processor in pipe.unet.attn_processors.items()
        }
        pipe.unet.set_attn_processor(originals)


def loaded_tokens(pipe) -> list[str]:
    runtime = find_runtime(pipe)
    return [] if runtime is None else list(runtime.concepts)
