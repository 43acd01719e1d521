"""Fingerprints of base-model weights: the key of the covariance cache and the guard on concept files.

A concept file's base-model fingerprint (``base_model_fingerprint``, format "v2") must not depend on how the same
weights were opened: in fp32, fp16 or bf16, from a diffusers folder or a single file, under transformers 4 (whose
CLIPTextModel names its weights "text_model.encoder...") or 5 ("encoder..."). An exact hash of values cannot be the
same across precisions (rounding to another precision moves values across any bucket's edge), so it holds an exact
hash of the weights' names and shapes and a *sketch* of their values: SKETCH_SIZE sums of a strided sample of every
tensor against fixed random signs, compared with a tolerance far above rounding (bf16's 0.4% per value averages out
in each sum) and far below what another model gives. Files written before (a plain hex digest of fp16-rounded
values) are compared as they were made.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable

import torch

FORMAT = "v2"
SKETCH_SIZE = 16
SAMPLES_PER_TENSOR = 4096  # a strided sample of each tensor enters the sketch
SKETCH_TOLERANCE = (
    1e-2  # relative distance allowed; fp32 against bf16 of the embedded model: 1.7e-3, another model ~1.4
)
LAYOUT_PREFIXES = ("text_model.",)  # transformers 4's CLIPTextModel nests its weights one level deeper than 5's


def normalised_name(name: str) -> str:
    """A weight's name with the layout prefixes of other library versions taken out."""
    for prefix in LAYOUT_PREFIXES:
        name = name.replace(prefix, "")
    return name


def sketch(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """(SKETCH_SIZE,) float64: each tensor's strided sample against signs seeded by its (normalised) name."""
    total = torch.zeros(SKETCH_SIZE, dtype=torch.float64)
    for name, tensor in named_tensors:
        flat = tensor.detach().flatten()
        values = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)].to("cpu", torch.float64)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        signs = torch.randint(0, 2, (SKETCH_SIZE, values.numel()), generator=generator, dtype=torch.int8) * 2 - 1
        total += signs.to(torch.float64) @ values
    return total


def names_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()[:16]


class MalformedFingerprint(ValueError):
    """A fingerprint that says it is v2 but cannot be read (a damaged file)."""


def parse(fingerprint: str) -> tuple[str, torch.Tensor] | None:
    """(names digest, sketch) of a v2 fingerprint; None for an older plain digest; MalformedFingerprint when it
    cannot be read."""
    if not fingerprint.startswith(FORMAT + ":"):
        return None
    try:
        _, names, numbers = fingerprint.split(":", 2)
        sketch = torch.tensor([float(x) for x in numbers.split(",")], dtype=torch.float64)
    except ValueError:
        raise MalformedFingerprint(f"unreadable fingerprint {fingerprint[:40]!r}") from None
    if not torch.isfinite(sketch).all():
        raise MalformedFingerprint(f"unreadable fingerprint {fingerprint[:40]!r}")
    return names, sketch


def fingerprints_match(stored: str, current: str, tensors: Callable[[], list[tuple[str, torch.Tensor]]]) -> bool:
    """Whether a stored fingerprint names the base model whose v2 fingerprint is ``current``: by names and a close
    sketch; an older plain digest as it was made, from ``tensors()`` (names with or without transformers 4's prefix,
    values rounded to fp16)."""
    ours = parse(current)
    try:
        theirs = parse(stored)
    except MalformedFingerprint:  # a damaged file's fingerprint names no base model
        return False
    if theirs is not None and ours is not None:
        (their_names, their_sketch), (our_names, our_sketch) = theirs, ours
        if their_sketch.shape != our_sketch.shape:
            return False
        scale = max(float(their_sketch.norm()), float(our_sketch.norm()), 1e-12)
        return their_names == our_names and float((their_sketch - our_sketch).norm()) <= SKETCH_TOLERANCE * scale
    if theirs is not None or stored == current:
        return stored == current
    normalised = [(normalised_name(name), tensor) for name, tensor in tensors()]
    prefixed = [(_with_prefix(name), tensor) for name, tensor in normalised]
    return any(stored == weights_digest(named)[:32] for named in (normalised, prefixed))


def short(fingerprint: str) -> str:
    """A fingerprint as people read it: the names digest of a v2 one, the start of an older one."""
    try:
        parsed = parse(fingerprint)
    except MalformedFingerprint:
        return f"{fingerprint[:12]} (unreadable)"
    return parsed[0][:12] if parsed else fingerprint[:12]


def _with_prefix(name: str) -> str:
    """transformers 4's name of a text-encoder weight ("text_encoder.text_model.encoder...")."""
    part, _, rest = name.partition(".")
    return f"{part}.text_model.{rest}" if part.startswith("text_encoder") else name


def format_fingerprint(named_tensors: list[tuple[str, torch.Tensor]]) -> str:
    normalised = [(normalised_name(name), tensor) for name, tensor in named_tensors]
    numbers = ",".join(f"{value:.9e}" for value in sketch(normalised).tolist())
    return f"{FORMAT}:{names_digest(normalised)}:{numbers}"


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over names and values; values are rounded to fp16 so fp32 and fp16 loads of one model agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


def text_encoder_tensors(text_encoder: torch.nn.Module, vocab_size: int) -> list[tuple[str, torch.Tensor]]:
    """The text encoder's weights, the token embedding cut to the tokenizer's own vocabulary.

    Rows of added tokens (concepts, textual inversions) are not part of the base model.
    """
    embedding = text_encoder.get_input_embeddings().weight
    tensors = []
    for name, value in text_encoder.state_dict().items():
        if value.data_ptr() == embedding.data_ptr():
            value = value[:vocab_size]
        tensors.append((name, value))
    return tensors


def text_encoder_fingerprint(text_encoder: torch.nn.Module, vocab_size: int) -> str:
    return weights_digest(text_encoder_tensors(text_encoder, vocab_size))


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's cross-attention modules by name (diffusers names them ``...attn2``), in model order."""
    return {name: module for name, module in unet.named_modules() if name.endswith("attn2")}


def base_model_tensors(text_encoders: list[tuple[str, torch.nn.Module, int]], unet: torch.nn.Module):
    """The text encoders (``(name, encoder, vocabulary size)``, named as the pipeline's attributes) and every
    cross-attention K/V projection: all that a concept's numbers depend on."""
    tensors = [
        (f"{part}.{name}", value)
        for part, text_encoder, vocab_size in text_encoders
        for name, value in text_encoder_tensors(text_encoder, vocab_size)
    ]
    for name, attention in cross_attention_modules(unet).items():
        tensors.append((f"{name}.to_k", attention.to_k.weight))
        tensors.append((f"{name}.to_v", attention.to_v.weight))
    return tensors


def base_model_fingerprint(text_encoders: list[tuple[str, torch.nn.Module, int]], unet: torch.nn.Module) -> str:
    """The v2 fingerprint of a base model (see the module's docstring)."""
    return format_fingerprint(base_model_tensors(text_encoders, unet))
