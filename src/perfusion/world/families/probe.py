"""A quick look at what a families base model has learned: attribute prompts and "a photo of a <category>", drawn
from a training checkpoint or a pipeline folder, on one contact sheet.

    python -m perfusion.world.families.probe --run-dir checkpoints/families --out probe.png [--seeds 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from perfusion.sheets import SheetRow, write_sheet

from .sampling import generate_images

PROBE_PROMPTS = (
    "a photo of a cat",
    "a black cat",
    "a white cat on a blue background",
    "an orange striped cat",
    "a gray cat with spots",
    "a long-tailed cat",
    "a chubby short-legged cat",
    "a cat with a red collar",
    "a sitting cat",
    "a yellow floppy-eared dog",
    "a brown dog with white patches",
    "a long-snouted pointy-eared dog",
    "a blue bird with a long tail",
    "a red crested bird",
    "an orange fish with stripes",
    "a tall purple fish",
    "a red mug",
    "a tall blue mug with stripes",
    "a squat green mug with a white band",
    "a brown teddy with a red bow",
    "a big-headed pink teddy",
    "a tall teal vase with spots",
    "a yellow car with a black stripe",
    "a big-wheeled red car on the left",
)


def draw_prompts(pipe, prompts, seeds: int, steps: int | None = None, guidance: float | None = None) -> list[SheetRow]:
    images = generate_images(pipe, list(prompts), list(range(seeds)), steps, guidance)
    return [
        SheetRow(prompt, [(images[index * seeds + seed], f"seed {seed}") for seed in range(seeds)])
        for index, prompt in enumerate(prompts)
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None, help="a pipeline folder instead of a checkpoint")
    parser.add_argument("--out", type=Path, default=Path("probe.png"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ema", action="store_true", help="the live weights (early in a run the EMA still lags)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.model is not None:
        from diffusers import StableDiffusionPipeline

        pipe, step = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True), "folder"
    else:
        from perfusion.world.basemodel.model import pipeline_from_checkpoint

        pipe, info = pipeline_from_checkpoint(arguments.run_dir or Path("checkpoints/families"), not arguments.no_ema)
        step = info["unet_step"]
    rows = draw_prompts(pipe, PROBE_PROMPTS, arguments.seeds, guidance=arguments.guidance)
    write_sheet(arguments.out, rows, title=f"families base model, step {step}", columns=arguments.seeds)
    print(arguments.out)


if __name__ == "__main__":
    main()
