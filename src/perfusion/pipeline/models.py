"""Opening a base model as a Stable Diffusion pipeline: a diffusers folder, a hub id or a single-file checkpoint."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch

from perfusion.concept.format import one_line


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


def add_model_arguments(parser, required: bool = True, what: str = "the base model") -> None:
    """The command line's --model and --config, read by ``open_pipeline(args.model, config=args.config)``."""
    parser.add_argument(
        "--model",
        required=required,
        help=f"{what}: a diffusers folder, a hub id (owner/name) or a single-file checkpoint (.safetensors, .ckpt)",
    )
    parser.add_argument(
        "--config",
        help="with a single-file --model: a diffusers folder or hub id of the same kind of model, for its configs "
        "(needed offline)",
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


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def is_single_file(source: str) -> bool:
    return Path(source).suffix.lower() in SINGLE_FILE_SUFFIXES


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file checkpoint (from the header only, for safetensors)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # an old, non-zip .ckpt cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return list(state.get("state_dict", state))


def single_file_class(path: Path, config: str | None):
    """The pipeline class for a single-file checkpoint: the one the ``config`` folder names, else SDXL where the file
    holds SDXL's text conditioner, else Stable Diffusion 1.x/2.x."""
    import diffusers

    if config is not None and (Path(config) / "model_index.json").is_file():
        name = json.loads((Path(config) / "model_index.json").read_text()).get("_class_name", "")
        if not hasattr(diffusers, name) or not hasattr(getattr(diffusers, name), "from_single_file"):
            raise ModelError(f"{config}: its pipeline ({name or 'unnamed'}) cannot be read from a single file")
        return getattr(diffusers, name)
    try:
        keys = checkpoint_keys(path)
    except Exception as error:  # a damaged file fails in safetensors or torch in several ways
        raise ModelError(f"{path}: not a readable checkpoint ({one_line(error)})") from None
    if any(key.startswith("conditioner.embedders.") for key in keys):  # SDXL (a refiner is refused once opened)
        return diffusers.StableDiffusionXLPipeline
    return diffusers.StableDiffusionPipeline


def open_single_file(path: Path, config: str | None, dtype):
    """A pipeline from one checkpoint in the original (LDM) layout, through diffusers' ``from_single_file``; the
    components' configs from ``config`` (a diffusers folder or a hub id), downloaded by diffusers when none is given."""
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    if config is None and offline():
        raise ModelError(
            f"{path}: a single-file checkpoint needs --config (a diffusers folder or a hub id of the same kind of model)"
            " while HF_HUB_OFFLINE is set"
        )
    if config is not None and looks_like_hub_id(config) and offline():
        raise ModelError(f"{config}: a model hub id, and HF_HUB_OFFLINE is set: give a diffusers folder as --config")
    if config is not None and not looks_like_hub_id(config) and not (Path(config) / "model_index.json").is_file():
        raise ModelError(f"{config}: --config is not a diffusers pipeline folder (no model_index.json) nor a hub id")
    cls = single_file_class(path, config)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kwargs["safety_checker"] = None
    local = config is not None and not looks_like_hub_id(config)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        return cls.from_single_file(str(path), config=config, local_files_only=local or offline(), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
        raise ModelError(f"{path}: cannot load the checkpoint as {cls.__name__} ({one_line(error)})") from None


def open_pipeline(
    path: str | Path, device: str | torch.device | None = None, half: bool | None = None, config: str | None = None
):
    """A diffusers pipeline from a local folder, a model hub id ("owner/name", downloaded when online) or a single-file
    checkpoint (.safetensors, .ckpt; ``config``: a diffusers folder or hub id with the same kind of model's configs);
    fp16 on a GPU unless told otherwise."""
    from diffusers import DiffusionPipeline

    source = str(path)
    device = torch.device(device) if device is not None else default_device()
    half = device.type == "cuda" if half is None else half
    if is_single_file(source):
        pipe = open_single_file(Path(source), None if config is None else str(config), torch.float16 if half else None)
        check_supported(pipe)
        return pipe.to(device)
    if config is not None:
        raise ModelError(f"{source}: --config is for single-file checkpoints (.safetensors, .ckpt), not a folder")
    hub = looks_like_hub_id(source)
    folder = Path(source)
    if not hub and not (folder / "model_index.json").is_file():
        raise ModelError(
            f"{folder}: not a diffusers pipeline folder (no model_index.json), a hub id (owner/name) nor a single-file "
            "checkpoint (.safetensors, .ckpt)"
        )
    if hub and offline():
        raise ModelError(
            f"{source}: a model hub id, and HF_HUB_OFFLINE is set: download it once online, or give a folder"
        )
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
