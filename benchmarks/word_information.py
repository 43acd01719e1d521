"""How much does the base model's denoising use each kind of attribute word? Same image, same noise, one word changed.

    python benchmarks/word_information.py --model src/perfusion/world/families/model --out work/word-information
        [--scenes 96] [--timesteps 100 300 500 700 900]

Fresh one-object training scenes (medium and large, patterned instances) are encoded by the model's autoencoder and
noised at fixed timesteps with fixed noise. The UNet's training loss (its v-prediction error, on the object's latent
cells) is computed under captions that differ in one word:
- colour: "a photo of a <colour> <category>" with the instance's colour name, against each other colour name its
  family uses;
- pattern: "a photo of a <colour> <adjective> <category>" with the instance's pattern, against the family's other
  non-plain patterns;
- shape: a shape word of the instance (a parameter in its low or high third) against the opposite third's word.
For each kind and timestep the report gives the loss with the right word and the mean excess of the wrong words over
it, in per cent of the right word's loss: a word the UNet does not use gives 0, whatever the text encoder does with
it. Where the wrong word costs little at every timestep, no guidance scale and no value edit can make the word show.
Beside it, ``latent_change``: how far the wrong word's own picture is from the right one (the same scene rendered
with the wrong colour, pattern or shape, the squared difference of the two latents on the object's cells, per
channel), so that a kind of word that changes little of the picture is not mistaken for one the model ignores.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from perfusion.training.images import images_to_tensor, mask_tensor
from perfusion.training.latents import forward_process, prediction_target
from perfusion.world.families import draw
from perfusion.world.families.captions import article
from perfusion.world.families.categories import CATEGORIES, PATTERN_WORDS
from perfusion.world.families.instances import Instance
from perfusion.world.families.palette import COLOURS
from perfusion.world.families.scenes import WorldSampling, cropped_sprite, render_with_mask, sample_spec, with_instance

FIRST_SEED = 7_000_000  # fresh scenes, outside the training pool's and the evaluations' seeds
SAMPLING = WorldSampling(second_object=0.0, seen_share=0.0, size_weights=(0.0, 0.5, 0.5))


def contrasts(spec) -> dict[str, tuple[str, list[tuple[str, Instance]]]]:
    """kind -> (the right caption, [(a caption with one word wrong, the instance that word would describe)])."""
    instance = spec.first.instance
    family = CATEGORIES[instance.category]
    noun, colour = instance.category, instance.colour_name
    rows = {
        "colour": (
            f"a photo of {article(f'{colour} {noun}')}",
            [
                (f"a photo of {article(f'{other} {noun}')}", replace(instance, colour=COLOURS[other]))
                for other in family.colours
                if other != colour
            ],
        )
    }
    if instance.pattern != "plain":
        adjective = PATTERN_WORDS[instance.pattern][0]
        others = [p for p in family.patterns if p not in ("plain", instance.pattern)]
        if others:
            rows["pattern"] = (
                f"a photo of {article(f'{colour} {adjective} {noun}')}",
                [
                    (
                        f"a photo of {article(f'{colour} {PATTERN_WORDS[other][0]} {noun}')}",
                        replace(instance, pattern=other),
                    )
                    for other in others
                ],
            )
    values = instance.shape_values
    named = [  # parameters in a named third, whose opposite third has words too
        index
        for index, shape in enumerate(family.shapes)
        if shape.words(values[index]) and (shape.high if values[index] < 0.5 else shape.low)
    ]
    if named:
        index = random.Random(repr(instance)).choice(named)  # one parameter per scene, not always the first
        shape, value = family.shapes[index], values[index]
        words, opposite = shape.words(value), shape.high if value < 0.5 else shape.low
        changed = list(values)
        changed[index] = 5 / 6 if value < 0.5 else 1 / 6  # the middle of the opposite third
        rows["shape"] = (
            f"a photo of {article(f'{words[0]} {colour} {noun}')}",
            [
                (
                    f"a photo of {article(f'{opposite[0]} {colour} {noun}')}",
                    replace(instance, shape_values=tuple(changed)),
                )
            ],
        )
    return rows


@torch.no_grad()
def encode(pipe, image) -> torch.Tensor:
    """The latent the base model trained on: the autoencoder's mean, scaled."""
    return pipe.vae.encode(images_to_tensor([image])).latent_dist.mean * pipe.vae.config.scaling_factor


def render_like(spec, instance: Instance):
    """The scene with ``instance`` in the first object's place, its pattern laid out as the first object's is (the
    layout is seeded by the instance, so a changed colour or shape would otherwise move the stripes too)."""
    seeded = draw._instance_rng
    cropped_sprite.cache_clear()
    try:
        with mock.patch.object(draw, "_instance_rng", lambda _: seeded(spec.first.instance)):
            return render_with_mask(with_instance(spec, instance))[0]
    finally:
        cropped_sprite.cache_clear()


@torch.no_grad()
def losses(pipe, noise_scheduler, latent, mask, encoding, timestep: int, noise: torch.Tensor) -> list[float]:
    """The UNet's training loss on the ``mask``ed cells under each caption's ``encoding``, for one noising."""
    t = torch.full((len(encoding),), timestep)
    latents, noise = latent.expand(len(encoding), -1, -1, -1), noise.expand(len(encoding), -1, -1, -1)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    prediction = pipe.unet(noisy, t, encoding).sample
    return masked_mean((prediction - prediction_target(noise_scheduler, latents, noise, t)) ** 2, mask).tolist()


def masked_mean(squares: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the mean over the latent cells weighted by ``mask`` (1, h, w) of the mean over channels."""
    error = squares.mean(dim=1)
    weight = mask.expand_as(error)
    return (error * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="src/perfusion/world/families/model")
    parser.add_argument("--out", default="work/word-information")
    parser.add_argument("--scenes", type=int, default=96)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise_scheduler = forward_process(pipe.scheduler)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    excess: dict[str, dict[int, list[float]]] = {}
    change: dict[str, list[float]] = {}
    right: dict[str, dict[int, list[float]]] = {}
    rng, seed, done = random.Random(FIRST_SEED), FIRST_SEED, 0
    while done < args.scenes:
        spec = sample_spec(rng, SAMPLING)
        seed += 1
        if spec.first.instance.pattern == "plain":
            continue
        image, mask = render_with_mask(spec)
        latent = encode(pipe, image)
        cells = mask_tensor(mask, image.width, image.width // factor)
        cells = (cells > 0.5).float() if (cells > 0.5).any() else cells
        for kind, (good, wrongs) in contrasts(spec).items():
            encoding = pipe.encode_prompt([good, *(text for text, _ in wrongs)], "cpu", 1, False)[0]  # once a kind
            others = [encode(pipe, render_like(spec, other)) for _, other in wrongs]
            change.setdefault(kind, []).append(
                float(np.mean([masked_mean((other - latent) ** 2, cells) for other in others]))
            )
            for timestep in args.timesteps:
                noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed * 1000 + timestep))
                values = losses(pipe, noise_scheduler, latent, cells, encoding, timestep, noise)
                right.setdefault(kind, {}).setdefault(timestep, []).append(values[0])
                excess.setdefault(kind, {}).setdefault(timestep, []).append(100 * (np.mean(values[1:]) / values[0] - 1))
        done += 1
        if done % 16 == 0:
            print(f"{done} scenes", flush=True)

    report = {}
    for kind in sorted(excess):
        report[kind] = {"latent_change": float(np.mean(change[kind]))}
        for timestep in args.timesteps:
            values = np.array(excess[kind][timestep])
            report[kind][str(timestep)] = {
                "loss_right": float(np.mean(right[kind][timestep])),
                "excess_percent": float(values.mean()),
                "stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
                "wrong_costs_more": float((values > 0).mean()),
                "scenes": len(values),
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "word_information.json").write_text(json.dumps(report, indent=2))
    print(f"{'kind':8s} {'latent':>7s} " + " ".join(f"t={t:>4d}          " for t in args.timesteps))
    for kind, rows in report.items():
        cells = [f"{rows[str(t)]['excess_percent']:+6.2f}% ±{rows[str(t)]['stderr']:4.2f} " for t in args.timesteps]
        print(f"{kind:8s} {rows['latent_change']:7.3f} " + " ".join(cells))


if __name__ == "__main__":
    main()
