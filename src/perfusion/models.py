"""Opening a base model folder as a Stable Diffusion pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class ModelError(ValueError):
    """A base model folder that cannot be opened."""


class UnsupportedPipelineError(ValueError):
    """A pipeline whose text conditioning Perfusion does not edit (yet)."""


SUPPORTED = "Stable Diffusion 1.x, 2.x and XL base pipelines are supported"


def check_supported(pipe) -> None:
    """SD 1.x, 2.x (one text encoder) and SDXL base (two) pipelines: text encoders whose hidden states condition a
    UNet's cross-attention. An SDXL refiner (the second text encoder only) is refused."""
    name = type(pipe).__name__
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is not None:
        raise UnsupportedPipelineError(
            f"{name}: the pipeline has only the second text encoder (an SDXL refiner): "
            f"concepts live in both of SDXL base's; {SUPPORTED}"
        )
    for part in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise UnsupportedPipelineError(f"{name}: the pipeline has no {part}; {SUPPORTED}")
    if getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "tokenizer_2", None) is None:
        raise UnsupportedPipelineError(
            f"{name}: the pipeline has a second text encoder but no tokenizer_2; {SUPPORTED}"
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def has_component(path: Path, name: str) -> bool:
    try:
        return name in json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False


def open_pipeline(path: str | Path, device: str | torch.device | None = None, half: bool | None = None):
    """A diffusers pipeline from a local folder (no downloads); fp16 on a GPU unless told otherwise."""
    from diffusers import DiffusionPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    device = torch.device(device) if device is not None else default_device()
    half = device.type == "cuda" if half is None else half
    kwargs = {"torch_dtype": torch.float16} if half else {}
    if has_component(path, "safety_checker"):  # SD 1.x's: off (SDXL has none, and warns at an unknown argument)
        kwargs["safety_checker"] = None
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot load the pipeline ({str(error).splitlines()[0]})") from None
    check_supported(pipe)
    return pipe.to(device)
