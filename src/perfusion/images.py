"""Reading a user's training images and masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class ImageInputError(ValueError):
    """Training images or masks that cannot be used."""


@dataclass
class TrainingImage:
    name: str
    image: Image.Image  # RGB
    mask: Image.Image | None  # L, 255 on the object; from the alpha channel or a mask file


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageInputError(f"{path}: not a readable image ({error.__class__.__name__})") from None


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB and, when the image has a non-trivial alpha channel, that channel as the object mask."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        return rgba.convert("RGB"), (alpha if alpha.getextrema()[0] < 255 else None)
    return image.convert("RGB"), None


def load_training_images(directory: str | Path, mask_dir: str | Path | None = None) -> list[TrainingImage]:
    """Every image in ``directory``; a mask from ``mask_dir`` (same file stem) beats the alpha channel."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageInputError(f"{directory}: no such directory")
    paths = sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageInputError(f"{directory}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    masks = {}
    if mask_dir is not None:
        mask_dir = Path(mask_dir)
        if not mask_dir.is_dir():
            raise ImageInputError(f"{mask_dir}: no such mask directory")
        masks = {path.stem: path for path in mask_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}
    items = []
    for path in paths:
        image, mask = split_alpha(open_image(path))
        if mask_dir is not None:
            if path.stem not in masks:
                raise ImageInputError(f"{mask_dir}: no mask for {path.name}")
            mask = open_image(masks[path.stem]).convert("L")
        if mask is not None and mask.getextrema()[1] == 0:
            raise ImageInputError(f"{path.name}: its mask is empty")
        items.append(TrainingImage(path.name, image, mask))
    return items


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) in [-1, 1]."""
    array = np.asarray(square_resize(image, size), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def mask_tensor(mask: Image.Image, size: int, latent_size: int) -> torch.Tensor:
    """(1, latent, latent) in [0, 1], area-resized to the latent grid."""
    array = np.asarray(square_resize(mask, size), dtype=np.float32) / 255.0
    return F.interpolate(torch.from_numpy(array)[None, None], size=(latent_size, latent_size), mode="area")[0]
