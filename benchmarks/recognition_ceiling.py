"""What "recognised" can reach on the base model's look: photos of an instance, regenerated part of the way.

Perfusion at its best would draw the instance itself in the base model's style. This benchmark makes such images
without any training: each category's first seen instance is photographed (12 photos, medium or large), every
photo is noised to a share of the schedule and denoised by the base model with its own caption (img2img, SDEdit),
and the judge scores the result as it scores a concept's images (accepted, right category, first in the gallery of
10). At strength 0 the images are renders (the judge's own check); the "autoencoder" row is their round trip through
the base model's autoencoder alone (encode, decode at the latent mean: what any image the model draws has been
through); as the strength grows the base model redraws more of the object: the recognition it keeps bounds what any
recipe can show with this base model and this judge.

    python benchmarks/recognition_ceiling.py --model DIR [--strengths 0 0.25 0.35 0.5 0.7] [--categories cat mug]
        [--vae checkpoints/families/vae]

Prints recognised and attribute match per category and strength; writes OUT/ceiling-{category}.png (a row per
strength) and OUT/summary.json.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from perfusion.sheets import SheetRow, write_sheet
from perfusion.world.basemodel.evaluate import autoencoded
from perfusion.world.families.captions import describe
from perfusion.world.families.categories import CATEGORY_NAMES
from perfusion.world.families.instances import seen_instances
from perfusion.world.families.judge import JUDGE_PATH, Judge
from perfusion.world.families.metrics import Gallery, attribute_match, stated_match
from perfusion.world.families.sampling import sampling_defaults
from perfusion.world.families.scenes import photos

PHOTOS = 12


@torch.no_grad()
def regenerate(img2img, images, captions, strength: float, seed: int) -> list:
    if strength == 0:
        return list(images)
    steps, guidance = sampling_defaults(None, None)
    return img2img(
        captions,
        image=list(images),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(seed + n) for n in range(len(images))],
    ).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.25, 0.35, 0.5, 0.7])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORY_NAMES))
    parser.add_argument("--vae", type=Path, help="an autoencoder folder to use instead of the model's (a new decoder)")
    parser.add_argument("--judge", type=Path, default=JUDGE_PATH)
    parser.add_argument("--out", type=Path, default=Path("work/recognition-ceiling"))
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    if arguments.vae is not None:
        pipe.vae = AutoencoderKL.from_pretrained(arguments.vae).to(pipe.vae.dtype)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    judge = Judge.load(arguments.judge)
    arguments.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in arguments.categories:
        instance = seen_instances(name)[0]
        gallery = Gallery.build(instance, judge)
        shots = photos(instance, PHOTOS, seed=100)  # the gallery's references are photos from seed 0
        rng = random.Random(f"ceiling/{name}")
        captions = [describe(spec, rng).text for _, _, spec in shots]
        renders = [image for image, _, _ in shots]
        rows, summary[name] = [], {}
        for strength in [arguments.strengths[0], "autoencoder", *arguments.strengths[1:]]:
            if strength == "autoencoder":
                images = autoencoded(img2img, renders)
            else:
                images = regenerate(img2img, renders, captions, strength, seed=7000)
            reading = judge.read(images)
            hits = gallery.recognised(reading)
            matches = [np.mean(list(attribute_match(reading, row, instance).values())) for row in range(len(images))]
            stated = [np.mean(list(stated_match(reading, row, instance).values())) for row in range(len(images))]
            key = strength if isinstance(strength, str) else f"{strength:g}"
            summary[name][key] = {
                "recognised": float(np.mean(hits)),
                "attribute_match": float(np.mean(matches)),
                "stated_match": float(np.mean(stated)),
            }
            print(name, key, json.dumps(summary[name][key]), flush=True)
            rows.append(SheetRow(key, [(image, "REC" if hit else "-") for image, hit in zip(images, hits)]))
        write_sheet(arguments.out / f"ceiling-{name}.png", rows, title=instance.describe(), columns=PHOTOS)
        (arguments.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
