"""What every diffusion fine-tuning here shares: a frozen pipeline on its device, latents encoded once, noising."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler

from perfusion.training.images import TrainingImage, image_tensor, mask_tensor, square_crop

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


TRAINED_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")  # text_encoder_2: SDXL's


def frozen_parts(pipe) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's modules that training freezes (and puts back), by attribute name."""
    return [(part, getattr(pipe, part)) for part in TRAINED_PARTS if getattr(pipe, part, None) is not None]


@dataclass
class PipelineState:
    """What freezing changes: each parameter's requires_grad, device and dtype, each buffer's device and dtype, and
    each module's training flag. (Under mixed precision the weights come back in their dtype but keep the values of
    the lower precision they were cast to.)"""

    parameters: dict[str, tuple[bool, torch.device, torch.dtype]]
    training: dict[str, bool]
    buffers: dict[str, tuple[torch.device, torch.dtype]] = field(default_factory=dict)

    @classmethod
    def of(cls, pipe) -> "PipelineState":
        parts = frozen_parts(pipe)
        return cls(
            {
                f"{part}.{name}": (tensor.requires_grad, tensor.device, tensor.dtype)
                for part, module in parts
                for name, tensor in module.named_parameters()
            },
            {f"{part}.{name}": sub.training for part, module in parts for name, sub in module.named_modules()},
            {
                f"{part}.{name}": (tensor.device, tensor.dtype)
                for part, module in parts
                for name, tensor in module.named_buffers()
            },
        )

    def restore(self, pipe) -> None:
        """Put every parameter and module back as recorded (a training run leaves the pipeline as it found it)."""
        for part, module in frozen_parts(pipe):
            for name, tensor in module.named_parameters():
                if f"{part}.{name}" not in self.parameters:  # added by a method and not yet taken out
                    continue
                requires_grad, device, dtype = self.parameters[f"{part}.{name}"]
                if tensor.device != device or tensor.dtype != dtype:
                    tensor.data = tensor.data.to(device, dtype)
                tensor.requires_grad_(requires_grad)
            for name, sub in module.named_modules():
                sub.training = self.training.get(f"{part}.{name}", sub.training)
            for name, tensor in module.named_buffers():
                device, dtype = self.buffers.get(f"{part}.{name}", (tensor.device, tensor.dtype))
                if tensor.device != device or tensor.dtype != dtype:
                    tensor.data = tensor.data.to(device, dtype)


@dataclass
class FrozenPipeline:
    accelerator: Accelerator
    device: torch.device
    weight_dtype: torch.dtype
    before: PipelineState  # the pipeline as it was given: ``before.restore(pipe)`` when training ends


def resolve_precision(pipe, mixed_precision: str) -> str:
    """ "auto": the pipeline's own precision where it trains well (bf16 anywhere, fp16 on a GPU); an fp16 pipeline on
    a CPU trains in fp32 (CPU fp16 kernels are slow or missing). Other values as given."""
    if mixed_precision != "auto":
        return mixed_precision
    dtype, device = pipe.unet.dtype, pipe.unet.device
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16 and (device.type == "cuda" or torch.cuda.is_available()):
        return "fp16"
    return "no"


def accelerator_for(mixed_precision: str) -> Accelerator:
    """An Accelerator at this precision. accelerate keeps one precision per process; a process that trains several
    concepts ("auto" follows each pipeline's dtype, a service trains many) starts its state afresh when it changes."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision)


def freeze(pipe, mixed_precision: str = "auto") -> FrozenPipeline:
    """Every base weight frozen (no gradients at all) and placed by accelerate, in the training's weight dtype: cast
    down under mixed precision, up to fp32 without it (a pipeline loaded in fp16 otherwise meets fp32 inputs). The
    trained tensors stay fp32 (no "unscale FP16 gradients"); ``before.restore`` puts every dtype back."""
    before = PipelineState.of(pipe)
    mixed_precision = resolve_precision(pipe, mixed_precision)
    accelerator = accelerator_for(mixed_precision)
    weight_dtype = WEIGHT_DTYPES.get(mixed_precision, torch.float32)
    for part, module in frozen_parts(pipe):
        module.requires_grad_(False)
        module.to(accelerator.device)
        upcast = part == "vae" and getattr(module.config, "force_upcast", False)  # SDXL's VAE overflows in fp16
        module.to(dtype=torch.float32 if upcast else weight_dtype)
    return FrozenPipeline(accelerator, accelerator.device, weight_dtype, before)


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
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy, timesteps, scheduler.get_velocity(latents, noise, timesteps)
    return noisy, timesteps, noise
