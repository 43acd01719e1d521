"""Opening a base model folder as a Stable Diffusion pipeline."""

from __future__ import annotations

import json
import os
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


def looks_like_hub_id(text: str) -> bool:
    """ "owner/name" (as stable-diffusion-v1-5/stable-diffusion-v1-5): two path parts, no local file or folder."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not Path(text).exists() and not text.startswith((".", "/", "~"))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def open_pipeline(path: str | Path, device: str | torch.device | None = None, half: bool | None = None):
    """A diffusers pipeline from a local folder, or a model hub id ("owner/name", downloaded when online); fp16 on a
    GPU unless told otherwise."""
    from diffusers import DiffusionPipeline

    source = str(path)
    hub = looks_like_hub_id(source)
    folder = Path(source)
    if not hub and not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder}: not a diffusers pipeline folder (no model_index.json) nor a hub id (owner/name)")
    if hub and offline():
        raise ModelError(
            f"{source}: a model hub id, and HF_HUB_OFFLINE is set: download it once online, or give a folder"
        )
    device = torch.device(device) if device is not None else default_device()
    half = device.type == "cuda" if half is None else half
    kwargs = {"torch_dtype": torch.float16} if half else {}
    if hub or has_component(folder, "safety_checker"):  # SD 1.x's: off (SDXL has none; unknown arguments are ignored)
        kwargs["safety_checker"] = None
    try:
        pipe = DiffusionPipeline.from_pretrained(source, local_files_only=not hub, **kwargs)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = "cannot download or find the pipeline" if hub else "cannot load the pipeline"
        raise ModelError(f"{source}: {where} ({reason})") from None
    check_supported(pipe)
    return pipe.to(device)
