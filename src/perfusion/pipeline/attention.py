"""Cross-attention whose probabilities are read, on the latent grid: one processor for the default object mask (perfusion.training.masks) and the
base model's token grounding (perfusion.world.basemodel.grounding)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from perfusion.concept.fingerprint import cross_attention_modules


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


def layer_grid(pixels: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) of a UNet layer with ``pixels`` positions over a height x width latent: each stride-2
    downsampling halves a side rounding up, so 90 x 160 goes 45 x 80, 23 x 40, 12 x 20."""
    rows, columns = height, width
    while rows * columns > pixels:
        rows, columns = -(-rows // 2), -(-columns // 2)
    if rows * columns != pixels:
        raise ValueError(f"a layer of {pixels} positions is no downsampling of a {height} x {width} latent")
    return rows, columns


def on_latent_grid(layer_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, pixels) attention of one layer -> (B, 1, height, width), bilinear from the layer's own resolution."""
    grid = layer_map.view(layer_map.shape[0], 1, *layer_grid(layer_map.shape[1], height, width))
    return F.interpolate(grid.float(), size=(height, width), mode="bilinear", align_corners=False)


def batch_indexed(value, size: int, index: torch.Tensor):
    """A UNet argument with one row per batch row, re-indexed, inside dicts, lists and tuples too (IP-Adapter's
    image embeddings, ControlNet's residuals); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {name: batch_indexed(item, size, index) for name, item in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # a named tuple is left as it is
        return type(value)(batch_indexed(item, size, index) for item in value)
    return value
