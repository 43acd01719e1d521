"""Cross-attention whose probabilities are read: one processor for the default object mask (perfusion.masks) and the
base model's token grounding (perfusion.world.basemodel.grounding)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from perfusion.fingerprint import cross_attention_modules


class RecordingCrossAttention:
    """Cross-attention with explicit probabilities (as diffusers' AttnProcessor) that hands their mean over heads,
    (batch, queries, tokens), to ``record``. For the plain attention blocks of SD-style UNets: no spatial or group
    norm, no residual inside the attention (install_recording checks), no attention mask (SD passes none)."""

    def __init__(self, record: Callable[[torch.Tensor], None]):
        self.record = record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("recorded cross-attention: attention masks are not supported (SD passes none)")
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probabilities = attn.get_attention_scores(query, key, None)  # (batch * heads, queries, tokens)
        batch = hidden_states.shape[0]
        self.record(probabilities.view(batch, attn.heads, *probabilities.shape[1:]).mean(1))
        output = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        return attn.to_out[1](attn.to_out[0](output)) / attn.rescale_output_factor


def install_recording(unet, record: Callable[[torch.Tensor], None]) -> dict:
    """Put a RecordingCrossAttention on every cross-attention layer of ``unet`` (self-attention keeps its own);
    returns the processors it replaced, for ``unet.set_attn_processor(dict(original))``."""
    layers = cross_attention_modules(unet)
    for name, module in layers.items():
        if module.spatial_norm is not None or module.group_norm is not None or module.residual_connection:
            raise ValueError(f"{name}: recorded cross-attention supports plain cross-attention blocks only")
    original = dict(unet.attn_processors)
    recording = {f"{name}.processor" for name in layers}
    unet.set_attn_processor(
        {
            name: RecordingCrossAttention(record) if name in recording else processor
            for name, processor in original.items()
        }
    )
    return original
