"""Degradations applied to clean renders while training the judge, so that it also reads imperfect diffusion samples:
noise, blur, small colour changes. None of them may change a label (no flips, no crops, no hue changes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    noise_sigma: float = 0.06  # max std of added Gaussian noise (images in [0, 1])
    blur_chance: float = 0.5  # the base model's samples are soft: soft objects must still be read as objects
    blur_sigma: tuple[float, float] = (0.3, 1.6)
    brightness: float = 0.08  # multiplicative, +-
    contrast: float = 0.10  # +-, around the image mean
    channel_shift: float = 0.025  # per-channel additive, +-


def _gaussian_kernels(sigmas: torch.Tensor, radius: int = 2) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=sigmas.dtype)
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * sigmas[:, None] ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)  # (N, 2r+1)


def blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image."""
    count, channels, height, width = images.shape
    kernels = _gaussian_kernels(sigmas)
    radius = kernels.shape[1] // 2
    weight = kernels.repeat_interleave(channels, dim=0)  # (N*C, k)
    flat = images.reshape(1, count * channels, height, width)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="replicate"), weight[:, None, None, :], groups=count * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="replicate"), weight[:, None, :, None], groups=count * channels
    )
    return flat.reshape(count, channels, height, width)


def augment(images: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> degraded copies, each with its own random strengths."""
    count = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, *shape, generator=generator)

    blurred = blur(images, uniform(*config.blur_sigma))
    use_blur = (torch.rand(count, generator=generator) < config.blur_chance)[:, None, None, None]
    images = torch.where(use_blur, blurred, images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * uniform(1 - config.contrast, 1 + config.contrast, 1, 1, 1) + mean
    images = images * uniform(1 - config.brightness, 1 + config.brightness, 1, 1, 1)
    images = images + uniform(-config.channel_shift, config.channel_shift, 3, 1, 1)
    noise = torch.randn(images.shape, generator=generator) * uniform(0, config.noise_sigma, 1, 1, 1)
    return (images + noise).clamp(0.0, 1.0)
