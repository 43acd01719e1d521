"""What "recognised" can reach on the base model's look: photos of an instance, regenerated part of the way.

Perfusion at its best would draw the instance itself in the base model's style. This benchmark makes such images
without any training: each category's first seen instance is photographed (12 photos, medium or large), every
photo is noised to a share of the schedule and denoised by the base model with its own caption (img2img, SDEdit),
and the judge scores the result as it scores a concept's images (accepted, right category, first in the gallery of
10). At strength 0 the images are renders (the judge's own check); as the strength grows the base model redraws
more of the object: the recognition it keeps bounds what any recipe can show with this base model and this judge.

    python benchmarks/recognition_ceiling.py --model DIR [--strengths 0 0.25 0.35 0.5 0.7] [--categories cat mug]

Prints recognised and attribute match per category and strength; writes OUT/ceiling-{category}.png (a row per
strength) and OUT/summary.json.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from perfusion.sheets import SheetRow, write_sheet
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
    parser.add_argument("--judge", type=Path, default=JUDGE_PATH)
    parser.add_argument("--out", type=Path, default=Path("work/recognition-ceiling"))
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(
        StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    )
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
        rows, summary[name] = [], {}
        for strength in arguments.strengths:
            images = regenerate(img2img, [image for image, _, _ in shots], captions, strength, seed=7000)
            reading = judge.read(images)
            hits = gallery.recognised(reading)
            matches = [np.mean(list(attribute_match(reading, row, instance).values())) for row in range(len(images))]
            stated = [np.mean(list(stated_match(reading, row, instance).values())) for row in range(len(images))]
            summary[name][f"{strength:g}"] = {
                "recognised": float(np.mean(hits)),
                "attribute_match": float(np.mean(matches)),
                "stated_match": float(np.mean(stated)),
            }
            print(name, f"strength {strength:g}", json.dumps(summary[name][f"{strength:g}"]), flush=True)
            rows.append(
                SheetRow(f"strength {strength:g}", [(image, "REC" if hit else "-") for image, hit in zip(images, hits)])
            )
        write_sheet(arguments.out / f"ceiling-{name}.png", rows, title=instance.describe(), columns=PHOTOS)
        (arguments.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
