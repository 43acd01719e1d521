"""Reading a user's training images and masks."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # greyscale of 16 bits a sample (PNG, TIFF)
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # in the message of PIL's DecompressionBombError


class ImageInputError(ValueError):
    """Training images or masks that cannot be used."""


@dataclass
class TrainingImage:
    name: str
    image: Image.Image  # RGB
    mask: Image.Image | None  # L, 255 on the object; from the alpha channel or a mask file


def too_many_pixels(path: Path, size: str) -> ImageInputError:
    return ImageInputError(
        f"{path}: {size}, more than the {Image.MAX_IMAGE_PIXELS:,} PIL allows "
        "(PIL.Image.MAX_IMAGE_PIXELS, its guard against decompression bombs): downscale it"
    )


def read_failure(error: Exception) -> str:
    """Why PIL could not read a file, in a few words."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    text = str(error)
    if "truncated" in text:
        return "truncated: the file ends early"
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


def upright(image: Image.Image) -> Image.Image:
    """A copy turned as the EXIF orientation says (a photo as it is shown); unturned if that data is broken."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: the pixels are still fine
        return image.copy()


def open_image(path: Path) -> Image.Image:
    """The image (the first frame of an animation), upright; one clear ImageInputError when it cannot be used:
    not a file, unreadable, empty, truncated, not an image, or over PIL's decompression-bomb limit."""
    if path.is_dir():
        raise ImageInputError(f"{path}: cannot be read (a directory, not a file)")
    try:
        if path.stat().st_size == 0:
            raise ImageInputError(f"{path}: an empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, not just warned of
            with Image.open(path) as handle:
                width, height = handle.size
                if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
                    raise too_many_pixels(path, f"{width}x{height} pixels")
                handle.load()
                return upright(handle)
    except Image.DecompressionBombError as error:  # over twice the limit: PIL refuses before giving the size
        found = BOMB_PIXELS.search(str(error))
        raise too_many_pixels(path, f"{int(found.group(1)):,} pixels" if found else "too many pixels") from None
    except PermissionError:
        raise ImageInputError(f"{path}: cannot be read (permission denied)") from None
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{path}: not a readable image ({read_failure(error)})") from None


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale as 8-bit "L", scaled (PIL's own conversion clips it at 255); anything else unchanged."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB and, when the image has a non-trivial alpha channel, that channel as the object mask."""
    image = eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        return rgba.convert("RGB"), (alpha if alpha.getextrema()[0] < 255 else None)
    return image.convert("RGB"), None


def load_training_images(directory: str | Path, mask_dir: str | Path | None = None) -> list[TrainingImage]:
    """Every image in ``directory``; a mask from ``mask_dir`` (same file stem) beats the alpha channel.

    Any mode loads (16-bit, palette, CMYK, greyscale; an animation's first frame), turned upright by its EXIF
    orientation; a mask must have its image's (upright) size and mark something.
    """
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
        source = "its alpha channel (the mask)"
        if mask_dir is not None:
            if path.stem not in masks:
                raise ImageInputError(f"{mask_dir}: no mask for {path.name}")
            mask = eight_bit(open_image(masks[path.stem])).convert("L")
            source = f"its mask {masks[path.stem]}"
            if mask.size != image.size:
                raise ImageInputError(
                    f"{path.name}: {source} is {mask.size[0]}x{mask.size[1]} but the image is "
                    f"{image.size[0]}x{image.size[1]}: a mask must have its image's size"
                )
        if mask is not None and mask.getextrema()[1] == 0:
            raise ImageInputError(f"{path.name}: {source} is all zero (it marks nothing)")
        items.append(TrainingImage(path.name, image, mask))
    return items


def square_resize(image: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Centre-crop to a square, then resize."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), resample)


def square_crop(image: Image.Image, size: int) -> tuple[int, int, int, int]:
    """What square_resize does, as SDXL's time ids tell it: (original height, width, crop top, crop left), the crop's
    corner counted in the image resized so that its shorter side is ``size`` (diffusers' SDXL training scripts)."""
    width, height = image.size
    scale = size / min(width, height)
    return height, width, round((height * scale - size) / 2), round((width * scale - size) / 2)


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> float tensor (N, 3, H, W) in [-1, 1], the range SD's autoencoder reads (diffusers'
    VaeImageProcessor; imported here, not at the top, so that reading images stays light)."""
    from diffusers.image_processor import VaeImageProcessor

    array = VaeImageProcessor.pil_to_numpy([image.convert("RGB") for image in images])
    return VaeImageProcessor.normalize(VaeImageProcessor.numpy_to_pt(array))


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) in [-1, 1]."""
    return images_to_tensor([square_resize(image, size)])[0]


def mask_tensor(mask: Image.Image, size: int, latent_size: int) -> torch.Tensor:
    """(1, latent, latent) in [0, 1], area-resized to the latent grid."""
    array = np.asarray(square_resize(mask, size), dtype=np.float32) / 255.0
    return F.interpolate(torch.from_numpy(array)[None, None], size=(latent_size, latent_size), mode="area")[0]
