"""Custom Diffusion's resize augmentation: scales, caption words and the valid region, as diffusers' script draws them."""

import random

import numpy as np
import torch
from PIL import Image

from perfusion.baselines.rescale import caption_prefix, draw_scale, rescaled, rescaled_bank
from perfusion.training.images import TrainingImage


def test_scales_fall_in_the_two_ranges_in_about_two_to_one():
    rng = random.Random(0)
    scales = [draw_scale(64, rng) for _ in range(3000)]
    small = [s for s in scales if s <= 64]
    assert all(21 <= s <= 64 for s in small) and all(76 <= s < 89 for s in scales if s > 64)
    assert abs(len(small) / len(scales) - 0.66) < 0.03  # binomial sd ~0.009 at n=3000


def test_the_caption_says_small_below_six_tenths_and_close_above_the_size():
    rng = random.Random(0)
    assert caption_prefix(30, 64, rng) in ("a far away ", "very small ")
    assert caption_prefix(50, 64, rng) == ""
    assert caption_prefix(64, 64, rng) == ""
    assert caption_prefix(80, 64, rng) in ("zoomed in ", "close up ")


def test_a_shrunk_image_is_pasted_whole_and_only_its_inside_counts():
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    canvas, region = rescaled(image, None, 64, 16, 32, random.Random(1))
    pixels = torch.from_numpy(np.asarray(canvas).astype(np.int64))
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 50)
    assert red.sum() == 32 * 32  # the whole image, nowhere else
    rows, columns = red.nonzero()[:, 0], red.nonzero()[:, 1]
    top, left = int(rows.min()), int(columns.min())
    inside = torch.zeros(16, 16)
    inside[top // 4 + 1 : (top + 32) // 4 - 1, left // 4 + 1 : (left + 32) // 4 - 1] = 1
    assert torch.equal(region[0], inside) and 0 < region.sum() < 8 * 8  # one cell in from each edge


def test_an_enlarged_image_is_cropped_and_counts_everywhere_but_off_its_object():
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the object is the left half
    canvas, region = rescaled(image, mask, 64, 16, 80, random.Random(2))
    assert canvas.size == (64, 64)
    assert region[0, :, :2].min() > 0.99 and region[0, :, -2:].max() < 0.01  # the mask moves with the crop


def test_the_bank_holds_every_variant_of_every_image_and_its_mirror_with_its_caption_words(tiny_pipe):
    images = [TrainingImage(f"{i}.png", Image.new("RGB", (64, 64), (40 * i, 90, 200)), None) for i in range(3)]
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    bank, prefixes = rescaled_bank(tiny_pipe, images, size, True, 4, False, torch.Generator().manual_seed(0))
    assert bank.means.shape[0] == len(prefixes) == 3 * 2 * 4
    assert bank.masks.shape[-1] == bank.means.shape[-1] and 0 < float(bank.masks.mean()) <= 1
    assert {"", "a far away ", "very small ", "zoomed in ", "close up "} >= set(prefixes)


def test_custom_diffusion_trains_on_the_rescaled_copies_with_their_caption_words(tiny_pipe, monkeypatch):
    from perfusion.baselines import custom_diffusion, training

    seen = []
    tokenize = training.tokenize
    monkeypatch.setattr(
        training, "tokenize", lambda tokenizer, prompts: seen.extend(prompts) or tokenize(tokenizer, prompts)
    )
    images = [TrainingImage(f"{i}.png", Image.new("RGB", (64, 64), (40 * i, 90, 200)), None) for i in range(2)]
    config = custom_diffusion.CONFIG.for_small_model(
        steps=6, batch_size=2, gradient_accumulation=1, num_class_images=2, class_inference_steps=2, rescale_variants=3
    )
    custom_diffusion.train(tiny_pipe, images, "<c>", "cat", config, progress=False)
    instance = [prompt for prompt in seen if "<c>" in prompt]
    assert len(instance) == 12 and any(not prompt.startswith("photo of") for prompt in instance)
    assert all(
        prompt.split("photo of")[0] in ("", "a far away ", "very small ", "zoomed in ", "close up ")
        for prompt in instance
    )
