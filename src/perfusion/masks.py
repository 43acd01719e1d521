"""The default object mask: the base model's own cross-attention map of the supercategory word (no extra model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perfusion.attention import install_recording
from perfusion.conditioning import TextConditioning
from perfusion.latents import forward_process
from perfusion.text import word_positions

MASK_BATCH = 4  # images per UNet call when reading the default masks


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


@torch.no_grad()
def attention_masks(
    pipe, latents: torch.Tensor, supercategory: str, prompt: str, timestep_fraction: float, seed: int
) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1]: cross-attention to the supercategory word, averaged over layers and heads.

    ``latents`` are clean, scaled VAE latents; they are noised to ``timestep_fraction`` of the schedule.
    """
    from perfusion.regions import batch_indexed  # here, not at the top: regions reads its maps with on_latent_grid

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
