"""Fingerprints of base-model weights: the key of the covariance cache and the guard on concept files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


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


def base_model_fingerprint(text_encoders: list[tuple[str, torch.nn.Module, int]], unet: torch.nn.Module) -> str:
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
    return weights_digest(tensors)[:32]
