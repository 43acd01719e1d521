"""Freezing a pipeline for fine-tuning: every base weight frozen and placed by accelerate in the training's dtype,
and put back as it was when training ends."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

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
