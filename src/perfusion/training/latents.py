"""What every diffusion fine-tuning here shares besides the frozen pipeline (perfusion.training.frozen): the training
images' latents encoded once, their masks, and noising."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from perfusion.training.images import TrainingImage, image_tensor, mask_tensor, square_crop


@dataclass
class LatentBank:
    """Latent distributions of every image (and its mirror), computed once, with masks on the latent grid."""

    means: torch.Tensor  # (n, 4, h, w), scaled
    stds: torch.Tensor
    masks: torch.Tensor  # (n, 1, h, w)
    mask_source: str = "none"
    crops: torch.Tensor | None = None  # (n, 4): original height, width, crop top, left (SDXL's time ids); None: square

    def draw(self, count: int, generator: torch.Generator):
        """Latents of ``count`` random images (fresh VAE posterior noise), their masks, and which images they are."""
        index = torch.randint(self.means.shape[0], (count,), generator=generator).to(self.means.device)
        noise = torch.randn(self.means[index].shape, generator=generator).to(self.means.device)
        return self.means[index] + self.stds[index] * noise, self.masks[index], index

    def sample(self, count: int, generator: torch.Generator):
        """Latents of ``count`` random images (fresh VAE posterior noise) and their masks."""
        return self.draw(count, generator)[:2]

    def time_ids(self, index: torch.Tensor, size: int) -> torch.Tensor:
        """(count, 6): SDXL's add_time_ids of these images as diffusers' SDXL training scripts send them: the photo's
        original size, the crop's top-left corner in the resized image, the training size."""
        if self.crops is None:
            crops = torch.tensor([[size, size, 0, 0]], dtype=torch.float32).repeat(len(index), 1)
        else:
            crops = self.crops[index.cpu()]
        return torch.cat([crops, torch.full((len(index), 2), float(size))], dim=1)


@torch.no_grad()
def encode_images(pipe, images: list[TrainingImage], size: int, flip: bool) -> LatentBank:
    """The VAE posterior (mean, std) of each image and, with ``flip``, of its mirror (in the VAE's own dtype); masks
    all ones."""
    pixels = torch.stack([image_tensor(item.image, size) for item in images])
    pixels = torch.cat([pixels, pixels.flip(-1)]) if flip else pixels
    crops = torch.tensor([square_crop(item.image, size) for item in images], dtype=torch.float32)
    crops = torch.cat([crops, crops]) if flip else crops  # a centre crop mirrors onto itself
    distribution = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
    scale = pipe.vae.config.scaling_factor
    means = distribution.mean.float() * scale
    return LatentBank(means, distribution.std.float() * scale, torch.ones_like(means[:, :1]), crops=crops)


def given_masks(images: list[TrainingImage], size: int, latent_size: int, flip: bool) -> torch.Tensor | None:
    """The images' own masks on the latent grid (mirrored like the images), or None when any image has none."""
    if any(item.mask is None for item in images):
        return None
    masks = torch.stack([mask_tensor(item.mask, size, latent_size) for item in images])
    return torch.cat([masks, masks.flip(-1)]) if flip else masks


def forward_process(scheduler) -> DDPMScheduler:
    """The noising a model was trained with, from any sampler's config (DPM-Solver and others lack get_velocity)."""
    return scheduler if isinstance(scheduler, DDPMScheduler) else DDPMScheduler.from_config(scheduler.config)


def noised(scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator):
    """Gaussian noise (never uniform) at uniform timesteps; the target the model predicts. `scheduler` is the
    forward process (``forward_process(pipe.scheduler)``, built once per training run)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    return (
        scheduler.add_noise(latents, noise, timesteps),
        timesteps,
        prediction_target(scheduler, latents, noise, timesteps),
    )


def prediction_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the model predicts for ``latents`` noised with ``noise``: v = sqrt(a) eps - sqrt(1 - a) x0, or eps."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise
