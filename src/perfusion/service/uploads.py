"""Checking what users upload before anything is queued or written: images (format, count, size, decompression
bombs) and concept files. Client file names are only ever quoted in messages, never made into paths."""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from perfusion.concept.format import Concept, ConceptFileError, one_line
from perfusion.files import atomic_write
from perfusion.service.config import ServiceConfig
from perfusion.training.images import upright

FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"}


class UploadError(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class UploadedImage:
    name: str  # the client's, for messages only
    image: Image.Image  # decoded: RGB, or RGBA when it has transparency (the mask)


def quoted(name: str | None) -> str:
    text = (name or "unnamed").replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def check_image(name: str | None, data: bytes, config: ServiceConfig) -> UploadedImage:
    label = quoted(name)
    if not data:
        raise UploadError(f"{label}: empty file")
    if len(data) > config.max_image_bytes:
        raise UploadError(f"{label}: {len(data):,} bytes, more than the {config.max_image_bytes:,} allowed", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format not in FORMATS:
                    raise UploadError(f"{label}: {opened.format} images are not taken ({', '.join(sorted(FORMATS))})")
                width, height = opened.size
                if width * height > config.max_image_pixels:
                    raise UploadError(
                        f"{label}: {width}x{height} pixels, more than the {config.max_image_pixels:,} allowed", 413
                    )
                opened.load()
                image = upright(opened)  # as the photo is shown (EXIF orientation), as the CLI reads it
                image = image.convert("RGBA" if has_transparency(image) else "RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"{label}: too many pixels (a decompression bomb?)", 413) from None
    except UnidentifiedImageError:
        raise UploadError(f"{label}: not an image this service reads") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UploadError(f"{label}: cannot be decoded ({one_line(error, 80)})") from None
    return UploadedImage(label, image)


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def check_images(files: list[tuple[str | None, bytes]], config: ServiceConfig) -> list[UploadedImage]:
    if not config.min_images <= len(files) <= config.max_images:
        raise UploadError(f"{len(files)} images given: upload {config.min_images} to {config.max_images}")
    return [check_image(name, data, config) for name, data in files]


def write_images(images: list[UploadedImage], folder: Path) -> None:
    """The images as 000.png, 001.png, ... (alpha kept: it is the mask); the folder is made here."""
    folder.mkdir(parents=True, exist_ok=False)
    for index, item in enumerate(images):
        atomic_write(folder / f"{index:03d}.png", lambda path, image=item.image: image.save(path, format="PNG"))


def check_concept_file(name: str | None, data: bytes, config: ServiceConfig) -> Concept:
    """A concept file's bytes, read and checked as any concept file is (perfusion.concept.format)."""
    label = quoted(name)
    if len(data) > config.max_concept_bytes:
        raise UploadError(f"{label}: {len(data):,} bytes, more than the {config.max_concept_bytes:,} allowed", 413)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.safetensors"
        path.write_bytes(data)
        try:
            concept = Concept.load(path)
        except ConceptFileError as error:
            raise UploadError(str(error).replace(str(path), label)) from None
    return concept
