"""Opening a base model folder as a Stable Diffusion pipeline."""

from __future__ import annotations

from pathlib import Path

import torch


class ModelError(ValueError):
    """A base model folder that cannot be opened."""


class UnsupportedPipelineError(ValueError):
    """A pipeline whose text conditioning Perfusion does not edit (yet)."""


def check_supported(pipe) -> None:
    """SD 1.x and 2.x pipelines: one text encoder whose hidden states condition a UNet's cross-attention."""
    name = type(pipe).__name__
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise UnsupportedPipelineError(f"{name}: pipelines with two text encoders (SDXL) are not supported yet; "
                                       "Stable Diffusion 1.x and 2.x pipelines are")  # fmt: skip
    for part in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise UnsupportedPipelineError(f"{name}: the pipeline has no {part} (an SDXL refiner has only the second "
                                           "text encoder); Stable Diffusion 1.x and 2.x pipelines are supported")  # fmt: skip


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_pipeline(path: str | Path, device: str | torch.device | None = None, half: bool | None = None):
    """A diffusers pipeline from a local folder (no downloads); fp16 on a GPU unless told otherwise."""
    from diffusers import DiffusionPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    device = torch.device(device) if device is not None else default_device()
    half = device.type == "cuda" if half is None else half
    kwargs = {"torch_dtype": torch.float16} if half else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot load the pipeline ({str(error).splitlines()[0]})") from None
    for name in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, name, None) is None:
            raise ModelError(f"{path}: the pipeline has no {name}")
    return pipe.to(device)
