"""Seconds per optimizer step of concept training, by batch layout and precision (run it alone: timings).

    python benchmarks/training_speed.py --model src/perfusion/world/families/model \\
        --example src/perfusion/world/families/examples/mycat --supercategory cat [--steps 40] [--threads 2]

Each layout (images per micro-batch x micro-batches per step, the same 16 images a step) trains twice, for 2 steps and
for 2 + --steps steps, in a fresh pipeline; the difference over --steps is the time of one step without the set-up
(encoding the photos, the held-out loss before and after). The model folder's recipe gives everything else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from perfusion.recipes import read_recipe
from perfusion.training.images import load_training_images
from perfusion.training.trainer import train_concept

LAYOUTS = {"4x4": (4, 4), "16x1": (16, 1), "8x2": (8, 2)}


def seconds(model: Path, images, supercategory: str, steps: int, layout: str, precision: str) -> float:
    batch, accumulation = LAYOUTS[layout]
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    config = read_recipe(model).training_config(
        steps=steps, batch_size=batch, gradient_accumulation=accumulation, mixed_precision=precision
    )
    return train_concept(pipe, images, "<concept>", supercategory, config, progress=False).seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--example", type=Path, required=True, help="a folder of photos, with masks/ if it has them")
    parser.add_argument("--supercategory", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--layouts", nargs="+", default=["4x4", "16x1"], choices=sorted(LAYOUTS))
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    masks = arguments.example / "masks"
    images = load_training_images(arguments.example, masks if masks.is_dir() else None)
    steps = read_recipe(arguments.model).training_config().steps
    rows = []
    for layout in arguments.layouts:
        for precision in arguments.precisions:
            short = seconds(arguments.model, images, arguments.supercategory, 2, layout, precision)
            long = seconds(arguments.model, images, arguments.supercategory, 2 + arguments.steps, layout, precision)
            per_step = (long - short) / arguments.steps
            rows.append(
                {
                    "layout": layout,
                    "precision": precision,
                    "seconds_per_step": round(per_step, 3),
                    "set_up_seconds": round(short - 2 * per_step, 1),
                    f"recipe_{steps}_steps_seconds": round(short - 2 * per_step + steps * per_step, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
