"""The default object mask: the base model's own cross-attention map of the supercategory word (no extra model)."""

from __future__ import annotations

import torch

from perfusion.pipeline.attention import batch_indexed, install_recording, on_latent_grid
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.text import word_positions
from perfusion.training.latents import forward_process

MASK_BATCH = 4  # images per UNet call when reading the default masks


@torch.no_grad()
def attention_masks(
    pipe, latents: torch.Tensor, supercategory: str, prompt: str, timestep_fraction: float, seed: int
) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1]: cross-attention to the supercategory word, averaged over layers and heads.

    ``latents`` are clean, scaled VAE latents; they are noised to ``timestep_fraction`` of the schedule.
    """

    batch_size, _, height, width = latents.shape
    text = TextConditioning.of(pipe)
    ids = text.tokenize([prompt.format(supercategory)] * batch_size)
    positions = word_positions(ids[0], text.supercategory_ids(supercategory))
    if not positions.any():
        raise ValueError(f"the supercategory {supercategory!r} does not appear in the mask prompt")

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timestep = torch.full((batch_size,), int(timestep_fraction * (pipe.scheduler.config.num_train_timesteps - 1)))
    # training's forward process, not the sampler's add_noise (Euler's is unscaled and follows its step index)
    noisy = forward_process(pipe.scheduler).add_noise(latents, noise, timestep)
    conditions = text.unet_conditions(ids, width * pipe.vae_scale_factor, latents.dtype)
    chosen = positions[:1].to(latents.device)[:, None, :]  # (1, 1, T) bool: the same prompt in every row
    chunks: list[list[torch.Tensor]] = []  # per UNet call, per cross-attention layer, (b, pixels): the attention paid

    def record(attention: torch.Tensor) -> None:
        chunks[-1].append((attention * chosen.to(attention.dtype)).sum(-1))

    original = install_recording(pipe.unet, record)
    try:
        for start in range(0, batch_size, MASK_BATCH):  # a few images a call: the whole bank at 1024 px is a lot
            rows = torch.arange(start, min(start + MASK_BATCH, batch_size))
            chunks.append([])
            pipe.unet(noisy[rows], timestep[rows].to(latents.device), **batch_indexed(conditions, batch_size, rows))
    finally:
        pipe.unet.set_attn_processor(dict(original))
    per_layer = [torch.cat(layer_maps) for layer_maps in zip(*chunks)]
    mask = torch.stack([on_latent_grid(layer_map, height, width) for layer_map in per_layer]).mean(0)
    low = mask.amin(dim=(2, 3), keepdim=True)
    high = mask.amax(dim=(2, 3), keepdim=True)
    return (mask - low) / (high - low).clamp_min(1e-8)
