"""The default object mask: the base model's own cross-attention map of the supercategory word (no extra model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perfusion.text import encode, tokenize, word_positions


class AttentionMapProcessor:
    """Stock attention that also keeps the attention each query pays to chosen token positions."""

    def __init__(self, positions: torch.Tensor):
        self.positions = positions  # (B, T) bool
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch_size, pixels, _ = hidden_states.shape
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probabilities = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, pixels, T)
        per_head = probabilities.view(batch_size, attn.heads, pixels, -1).mean(1)
        chosen = (per_head * self.positions[:, None, :].to(per_head.dtype)).sum(-1)  # (B, pixels)
        self.maps.append(chosen)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


def on_latent_grid(layer_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, pixels) attention of one layer -> (B, 1, height, width), bilinear from the layer's own resolution."""
    scale = (height * width / layer_map.shape[1]) ** 0.5  # this layer's downsampling factor
    grid = layer_map.view(layer_map.shape[0], 1, round(height / scale), round(width / scale))
    return F.interpolate(grid.float(), size=(height, width), mode="bilinear", align_corners=False)


@torch.no_grad()
def attention_masks(
    pipe, latents: torch.Tensor, supercategory: str, prompt: str, timestep_fraction: float, seed: int
) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1]: cross-attention to the supercategory word, averaged over layers and heads.

    ``latents`` are clean, scaled VAE latents; they are noised to ``timestep_fraction`` of the schedule.
    """
    batch_size, _, height, width = latents.shape
    ids = tokenize(pipe.tokenizer, [prompt.format(supercategory)] * batch_size)
    positions = word_positions(ids, pipe.tokenizer(supercategory, add_special_tokens=False).input_ids)
    if not positions.any():
        raise ValueError(f"the supercategory {supercategory!r} does not appear in the mask prompt")

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timestep = torch.full((batch_size,), int(timestep_fraction * (pipe.scheduler.config.num_train_timesteps - 1)))
    noisy = pipe.scheduler.add_noise(latents, noise, timestep)
    encodings = encode(pipe.text_encoder, ids)

    original = pipe.unet.attn_processors
    capture = AttentionMapProcessor(positions.to(latents.device))
    pipe.unet.set_attn_processor(
        {name: capture if name.endswith("attn2.processor") else processor for name, processor in original.items()}
    )
    try:
        pipe.unet(noisy, timestep.to(latents.device), encoder_hidden_states=encodings)
    finally:
        pipe.unet.set_attn_processor(dict(original))
    mask = torch.stack([on_latent_grid(layer_map, height, width) for layer_map in capture.maps]).mean(0)
    low = mask.amin(dim=(2, 3), keepdim=True)
    high = mask.amax(dim=(2, 3), keepdim=True)
    return (mask - low) / (high - low).clamp_min(1e-8)
