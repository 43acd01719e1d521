"""Loading concepts into a diffusers pipeline and taking them out again (the load_*/unload_* pair)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from perfusion.concept.fingerprint import cross_attention_modules, short
from perfusion.concept.format import Concept, ConceptFileError, shorten
from perfusion.pipeline import covariance
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.corpus import model_captions
from perfusion.pipeline.fingerprint import pipeline_fingerprint, trained_on
from perfusion.pipeline.models import check_supported
from perfusion.pipeline.processor import PerfusionAttnProcessor
from perfusion.pipeline.runtime import PerfusionRuntime


def find_runtime(pipe) -> PerfusionRuntime | None:
    """``PerfusionRuntime.of(pipe)``: the pipeline's Perfusion state, or None."""
    return PerfusionRuntime.of(pipe)


@contextmanager
def embedding_frozen_state_kept(*text_encoders):
    """Resizing the token embedding makes a new, trainable weight: keep a frozen encoder frozen."""
    states = [encoder.get_input_embeddings().weight.requires_grad for encoder in text_encoders]
    try:
        yield
    finally:
        for encoder, requires_grad in zip(text_encoders, states):
            encoder.get_input_embeddings().weight.requires_grad_(requires_grad)


def shares_tokenizer(towers, n: int) -> bool:
    """Tower n's tokenizer is an earlier tower's object (an SDXL pipeline built in memory may hand both encoders one)."""
    return any(other.tokenizer is towers[n].tokenizer for other in towers[:n])


def add_tokens(pipe, tokens: list[str], embeddings: list[list[torch.Tensor]]) -> None:
    """The tokens into every tokenizer, each with its v* of each tower (``embeddings[n]`` for ``tokens[n]``), through
    diffusers' textual-inversion loader, all in one call per text encoder (one resize of its embedding, however many
    concepts); a shared tokenizer takes them once, and the later encoder gets its v* at the same ids."""
    if not tokens:
        return
    towers = TextConditioning.of(pipe).towers
    with embedding_frozen_state_kept(*(tower.text_encoder for tower in towers)):
        for n, tower in enumerate(towers):
            vectors = [vectors_[n].detach().to(tower.text_encoder.dtype) for vectors_ in embeddings]
            if not shares_tokenizer(towers, n):
                pipe.load_textual_inversion(
                    vectors if len(vectors) > 1 else vectors[0],
                    token=list(tokens) if len(tokens) > 1 else tokens[0],
                    tokenizer=tower.tokenizer,
                    text_encoder=tower.text_encoder,
                )
                continue
            if tower.text_encoder.get_input_embeddings().num_embeddings < len(tower.tokenizer):
                tower.text_encoder.resize_token_embeddings(len(tower.tokenizer), mean_resizing=False)
            with torch.no_grad():
                weight = tower.text_encoder.get_input_embeddings().weight
                for token, vector in zip(tokens, vectors):
                    weight[tower.tokenizer.convert_tokens_to_ids(token)] = vector


def remove_tokens(pipe, tokens: list[str]) -> None:
    """Tokens out of every tokenizer that has them, their rows out of its text encoder (a shared tokenizer's rows out
    of every encoder that reads it)."""
    towers = TextConditioning.of(pipe).towers
    removed: dict[int, list[int]] = {}  # id(tokenizer): the token ids taken out of it
    with embedding_frozen_state_kept(*(tower.text_encoder for tower in towers)):
        for n, tower in enumerate(towers):
            if shares_tokenizer(towers, n):
                drop_rows(tower.text_encoder, removed.get(id(tower.tokenizer), []))
                continue
            vocab = tower.tokenizer.get_vocab()
            present = [token for token in tokens if token in vocab]
            removed[id(tower.tokenizer)] = [vocab[token] for token in present]
            if present:
                pipe.unload_textual_inversion(present, tokenizer=tower.tokenizer, text_encoder=tower.text_encoder)


def drop_rows(text_encoder, ids: list[int]) -> None:
    """The token embedding without the rows at ``ids`` (what unload_textual_inversion does to the encoder it is given)."""
    if not ids:
        return
    weight, dropped = text_encoder.get_input_embeddings().weight, set(ids)
    keep = torch.tensor([i for i in range(weight.shape[0]) if i not in dropped], device=weight.device)
    text_encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(weight.detach()[keep], freeze=False))


def install(
    pipe, captions=None, progress: bool = False, inverse: torch.Tensor | None = None, fingerprint: str | None = None
) -> PerfusionRuntime:
    """Put the edit processors on every cross-attention layer (self-attention keeps its own) and attach hooks."""
    runtime = find_runtime(pipe)
    if runtime is not None:
        return runtime
    text = TextConditioning.of(pipe)
    given_inverse = inverse
    if captions is None and inverse is None:
        captions = model_captions(pipe)  # the model folder's own corpus, else (None) the packaged one
    if inverse is None:
        inverse = covariance.inverse_covariance(text, captions, progress=progress)
    runtime = PerfusionRuntime(text, inverse, fingerprint or pipeline_fingerprint(pipe))
    runtime.corpus = covariance.corpus_label(captions) if given_inverse is None else None  # None: C^-1 given directly
    layers = cross_attention_modules(pipe.unet)
    processors = {
        name: PerfusionAttnProcessor(processor, runtime, name.removesuffix(".processor"))
        if name.removesuffix(".processor") in layers
        else processor
        for name, processor in pipe.unet.attn_processors.items()
    }
    pipe.unet.set_attn_processor(processors)
    runtime.attach(pipe.unet)
    runtime.router.before_call = lambda unet: keep_edit_processors(runtime, layers)
    return runtime


def keep_edit_processors(runtime: PerfusionRuntime, layers: dict) -> None:
    """Put the edit back on top of any processor set since loading: ``enable_attention_slicing()`` or xformers
    replace every processor, and the concept would act as textual inversion only. Checked at each UNet call (a
    loop over the cross-attention layers); the new processor becomes the one rows without concepts go through."""
    replaced = [name for name, module in layers.items() if not isinstance(module.processor, PerfusionAttnProcessor)]
    for name in replaced:
        module = layers[name]
        module.set_processor(PerfusionAttnProcessor(module.processor, runtime, name))
    if replaced and not runtime.warned_processors:
        runtime.warned_processors = True
        warnings.warn(
            f"the attention processors of {len(replaced)} cross-attention layers were replaced after the concepts "
            "were loaded (attention slicing, xformers?): the edit is put back on top of them",
            UserWarning,
            stacklevel=2,
        )


def features(projection: torch.nn.Module, attribute: str) -> int:
    """``in_features``/``out_features`` of a linear projection, a LoRA wrapper's too (peft and diffusers keep them)."""
    value = getattr(projection, attribute, None)
    if isinstance(value, int):
        return value
    weight = getattr(projection, "base_layer", projection).weight
    return weight.shape[1 if attribute == "in_features" else 0]


def check_compatible(concept: Concept, fingerprint: str, pipe, source: str, check: bool = True) -> None:
    """Refuse a concept this pipeline cannot run: another base model (when ``check``), other layers or other widths.

    Shapes are always checked: a wrong width loads silently and crashes the first generation in a matrix product.
    """
    towers = TextConditioning.of(pipe).towers
    if len(concept.token_embeddings) != len(towers):  # before the fingerprint: the clearer line
        kinds = {1: "one text encoder (Stable Diffusion 1.x or 2.x)", 2: "two text encoders (SDXL)"}
        made, here = (
            kinds.get(count, f"{count} text encoders") for count in (len(concept.token_embeddings), len(towers))
        )
        raise ConceptFileError(f"{source}: made for a pipeline with {made}, this one has {here}")
    if check and not trained_on(pipe, concept.base_fingerprint, fingerprint):
        raise ConceptFileError(
            f"{source}: trained on another base model (fingerprint {short(concept.base_fingerprint)!r}, "
            f"this pipeline is {short(fingerprint)})"
        )
    layers = cross_attention_modules(pipe.unet)
    if set(concept.value_targets) != set(layers):
        missing = [layer for layer in layers if layer not in concept.value_targets]
        extra = [layer for layer in concept.value_targets if layer not in layers]
        detail = (
            f"no value target for {missing[0]}"
            if missing
            else f"a value target for {shorten(extra[0], 80)}, not a layer here"
        )
        raise ConceptFileError(f"{source}: its layers do not match this pipeline's cross-attention layers ({detail})")
    for tower, embedding in zip(towers, concept.token_embeddings):
        embedding_width = tower.text_encoder.get_input_embeddings().weight.shape[1]
        if tuple(embedding.shape) != (embedding_width,):
            raise ConceptFileError(
                f"{source}: v* has width {embedding.numel()}, "
                f"this pipeline's {tower.name} token embeddings {embedding_width}"
            )
    for layer, attention in layers.items():
        width = features(attention.to_k, "in_features")
        for name, encoding in (("i*", concept.concept_encoding), ("i*_super", concept.supercategory_encoding)):
            if tuple(encoding.shape) != (width,):
                raise ConceptFileError(
                    f"{source}: {name} has width {encoding.numel()}, this pipeline's encodings {width}"
                )
        width = features(attention.to_v, "out_features")
        if tuple(concept.value_targets[layer].shape) != (width,):
            raise ConceptFileError(
                f"{source}: the value target of {layer} has width "
                f"{concept.value_targets[layer].numel()}, the layer's output {width}"
            )


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

    ``captions`` replaces the corpus for estimating C (computed once per base model and corpus, then cached): by
    default the model folder's own (``perfusion_captions.txt``), else the packaged one;
    ``inverse_covariance`` gives C^-1 directly; ``check=False`` skips the base-model fingerprint check (a LoRA-wrapped
    or trained pipeline), never the checks of layers and widths.

    All or nothing: every concept is checked before the pipeline changes (a ConceptFileError naming the file
    leaves it as it was), and a failure while installing takes this call's concepts out again.
    """
    check_supported(pipe)  # before anything is read or installed
    if isinstance(concepts, (str, Path, Concept)):
        concepts = [concepts]
    loaded = []
    for item in concepts:
        if isinstance(item, Concept):
            token = item.token
            source = f"concept {token if isinstance(token, str) and len(token) <= 64 else shorten(token)}"
            item.validate(source)
            loaded.append((item, source))
        else:
            loaded.append((Concept.load(item), str(item)))
    runtime = find_runtime(pipe)
    fingerprint = runtime.base_fingerprint if runtime is not None else pipeline_fingerprint(pipe)
    taken = set(runtime.concepts) if runtime is not None else set()
    for concept, source in loaded:  # refuse bad files before the (slow) covariance and before any change to pipe
        check_compatible(concept, fingerprint, pipe, source, check)
        if concept.token in taken:
            raise ConceptFileError(f"{source}: the token {concept.token} is already loaded")
        if any(concept.token in tower.tokenizer.get_vocab() for tower in TextConditioning.of(pipe).towers):
            raise ConceptFileError(f"{source}: the token {concept.token} is already a word of this tokenizer")
        taken.add(concept.token)
    created = runtime is None
    added: list[str] = []
    try:
        runtime = install(pipe, captions, progress, inverse_covariance, fingerprint)
        device = pipe.unet.device
        added = [concept.token for concept, _ in loaded]
        add_tokens(pipe, added, [concept.token_embeddings for concept, _ in loaded])
        for concept, _ in loaded:
            runtime.add(installed_copy(concept, device))
    except BaseException:
        roll_back(pipe, added, created)
        raise
    for concept, source in loaded:
        warn_if_other_corpus(concept, runtime, source)
    return [concept for concept, _ in loaded]


def warn_if_other_corpus(concept: Concept, runtime, source: str) -> None:
    """One line when a concept's i* met a C of another caption corpus than this pipeline's: s(e) is measured in the
    C^-1 metric, so the gate may open at other tokens than it did in training."""
    recorded = concept.training.get("covariance_corpus")
    if recorded and runtime.corpus and recorded != runtime.corpus:
        warnings.warn(
            f"{source}: trained with C from {recorded}, this pipeline's C is from {runtime.corpus}; the gate may "
            "fire differently (load with the captions it was trained with)",
            UserWarning,
            stacklevel=3,
        )


def roll_back(pipe, tokens: list[str], created: bool) -> None:
    """Undo a load_concepts call that failed part way: its tokens out of the tokenizer and the runtime, and the
    processors and hooks off again if that call put them on."""
    runtime = find_runtime(pipe)
    remove_tokens(pipe, tokens)  # none was in a tokenizer before the call
    if runtime is None:
        return
    for token in tokens:
        if token in runtime.concepts:
            runtime.remove(token)
    if created:
        uninstall(pipe, runtime)


def installed_copy(concept: Concept, device) -> Concept:
    """The runtime's own copy of a caller's concept (value targets on the UNet's device); the caller's is untouched."""
    return concept.copy(value_device=device)


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
        remove_tokens(pipe, tokens)
    for token in tokens:
        runtime.remove(token)
    if not runtime.concepts:
        uninstall(pipe, runtime)


def uninstall(pipe, runtime: PerfusionRuntime) -> None:
    """The hooks off and the stock processors back."""
    runtime.detach()
    originals = {
        name: processor.original if isinstance(processor, PerfusionAttnProcessor) else processor
        for name, processor in pipe.unet.attn_processors.items()
    }
    pipe.unet.set_attn_processor(originals)


def loaded_tokens(pipe) -> list[str]:
    runtime = find_runtime(pipe)
    return [] if runtime is None else list(runtime.concepts)
