"""Custom Diffusion's default augmentation (Kumari et al., 2023; diffusers' train_custom_diffusion.py): each training
image at a random scale, shrunk onto a blank canvas or enlarged and cropped, with the size said in the caption and
the loss on the valid region only.

    bank, prefixes = rescaled_bank(pipe, images, size, flip, variants=8, use_masks=False, generator=g)

A scale s is drawn per variant: with probability 0.66 uniformly in [size/3, size], else in [1.2 size, 1.4 size).
Below size, the image is pasted at a random place on a zero (mid-grey) canvas and the loss mask is the pasted
square, one latent cell in from each edge; above size, a random size x size crop is taken and the mask is all ones.
The caption gets "a far away " or "very small " in front when s < 0.6 size, "zoomed in " or "close up " when s >
size. The variants are encoded once, like the plain bank.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from perfusion.training.images import TrainingImage, images_to_tensor, square_resize
from perfusion.training.latents import LatentBank

SHRINK_SHARE = 0.66  # variants drawn at or below the training size
SMALL_WORDS, LARGE_WORDS = ("a far away ", "very small "), ("zoomed in ", "close up ")
REDRAWS = 20  # draws of a variant before giving up on one that keeps any of the object
ENCODE_BATCH = 8  # copies through the autoencoder at a time


def draw_scale(size: int, rng: random.Random) -> int:
    # s ~ U[size/3, size] with p = 0.66, else U[1.2 size, 1.4 size)
    if rng.random() < SHRINK_SHARE:
        return rng.randint(size // 3, size)
    return rng.randint(int(1.2 * size), int(1.4 * size) - 1)


def caption_prefix(scale: int, size: int, rng: random.Random) -> str:
    if scale < 0.6 * size:
        return rng.choice(SMALL_WORDS)
    if scale > size:
        return rng.choice(LARGE_WORDS)
    return ""


def rescaled(
    image: Image.Image, mask: Image.Image | None, size: int, latent_size: int, scale: int, rng: random.Random
) -> tuple[Image.Image, torch.Tensor]:
    """The image at ``scale`` on a size x size canvas, and the valid region (x the object's mask, if given) on the
    latent grid (1, latent, latent)."""
    cell = size // latent_size
    picture = square_resize(image, scale, Image.BILINEAR)  # diffusers' script resizes bilinearly
    object_mask = square_resize(mask, scale, Image.BILINEAR) if mask is not None else None
    valid = np.zeros((latent_size, latent_size), dtype=np.float32)
    if scale > size:
        top, left = rng.randint(0, scale - size), rng.randint(0, scale - size)
        box = (left, top, left + size, top + size)
        canvas = picture.crop(box)
        object_canvas = object_mask.crop(box) if object_mask is not None else None
        valid[:] = 1.0
    else:
        top, left = rng.randint(0, size - scale), rng.randint(0, size - scale)
        canvas = Image.new("RGB", (size, size), (128, 128, 128))  # zero in [-1, 1]: outside the loss anyway
        canvas.paste(picture, (left, top))
        object_canvas = None
        if object_mask is not None:
            object_canvas = Image.new("L", (size, size), 0)
            object_canvas.paste(object_mask, (left, top))
        valid[top // cell + 1 : (top + scale) // cell - 1, left // cell + 1 : (left + scale) // cell - 1] = 1.0
    region = torch.from_numpy(valid)[None]
    if object_canvas is not None:
        array = torch.from_numpy(np.asarray(object_canvas, dtype=np.float32) / 255.0)[None, None]
        region = region * F.interpolate(array, size=(latent_size, latent_size), mode="area")[0]
    return canvas, region


@torch.no_grad()
def rescaled_bank(
    pipe,
    images: list[TrainingImage],
    size: int,
    flip: bool,
    variants: int,
    use_masks: bool,
    generator: torch.Generator,
) -> tuple[LatentBank, list[str]]:
    """``variants`` rescaled copies of each image (and of its mirror, with ``flip``), encoded once; the caption
    prefix of each."""
    rng = random.Random(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    latent_size = size // pipe.vae_scale_factor
    sources = [(item.image, item.mask if use_masks else None) for item in images]
    if flip:
        sources += [
            (image.transpose(Image.FLIP_LEFT_RIGHT), None if mask is None else mask.transpose(Image.FLIP_LEFT_RIGHT))
            for image, mask in sources
        ]
    canvases, regions, prefixes = [], [], []
    for image, mask in sources:
        for _ in range(variants):
            for _ in range(REDRAWS):  # a crop that misses the object leaves no loss at all: draw again
                scale = draw_scale(size, rng)
                canvas, region = rescaled(image, mask, size, latent_size, scale, rng)
                if region.sum() > 0:
                    break
            else:
                raise ValueError("no rescaled copy keeps any of the object: check the masks")
            canvases.append(canvas)
            regions.append(region)
            prefixes.append(caption_prefix(scale, size, rng))
    means, stds = [], []
    for start in range(0, len(canvases), ENCODE_BATCH):  # bounded memory at SD sizes
        pixels = images_to_tensor(canvases[start : start + ENCODE_BATCH]).to(pipe.vae.device, pipe.vae.dtype)
        distribution = pipe.vae.encode(pixels).latent_dist
        means.append(distribution.mean.float())
        stds.append(distribution.std.float())
    scaling = pipe.vae.config.scaling_factor
    means = torch.cat(means) * scaling
    bank = LatentBank(means, torch.cat(stds) * scaling, torch.stack(regions).to(means.device))
    bank.mask_source = "rescaled" + (" x given" if use_masks else "")
    return bank, prefixes
