"""Does the base model's autoencoder keep an instance's pattern? The judge's pattern reading on patterned renders,
before and after a round trip through the autoencoder (encode, decode at the latent mean): a pattern the
autoencoder smears is one the UNet cannot learn to draw, whatever its training.

    python benchmarks/autoencoder_patterns.py --model DIR [--count 400]

Prints the pattern (and colour, category) agreement with the ground truth on renders and on their round trips, by
size; writes work/autoencoder-patterns.png (renders above their round trips).
"""

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from perfusion.world.families.judge import JUDGE_PATH, Judge
from perfusion.world.families.judge_data import free_instance, one_object_labels, one_object_spec
from perfusion.world.families.judge_net import HEAD_CLASSES
from perfusion.world.families.scenes import render

HEADS = ("category", "colour", "pattern")


def patterned_scenes(count: int, seed: int = 5_000_000):
    rng = random.Random(f"autoencoder-patterns/{seed}")
    scenes = []
    while len(scenes) < count:
        spec = one_object_spec(free_instance(rng), rng, small=0.0)
        if spec.first.instance.pattern != "plain":
            scenes.append(spec)
    return scenes


def strip(batch: torch.Tensor) -> np.ndarray:
    """The first 12 images side by side, uint8."""
    return np.concatenate(list((batch[:12].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--judge", default=JUDGE_PATH)
    parser.add_argument("--count", type=int, default=400)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    judge = Judge.load(arguments.judge)
    vae = AutoencoderKL.from_pretrained(arguments.model / "vae").float().eval()
    scenes = patterned_scenes(arguments.count)
    renders = torch.from_numpy(np.stack([np.asarray(render(spec)) for spec in scenes])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        trips = torch.cat(
            [
                ((vae.decode(vae.encode(chunk * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
                for chunk in renders.split(50)
            ]
        )
    labels = [one_object_labels(spec)[0] for spec in scenes]
    sizes = np.array([spec.size for spec in scenes])
    for name, images in (("renders", renders), ("round trips", trips)):
        reading = judge.read(images)
        line = []
        for head in HEADS:
            read = reading.probabilities[head].argmax(-1).numpy()
            truth = np.array([row[head] for row in labels])
            hits = read == truth
            line.append(f"{head} {hits.mean():.2f}")
            if head == "pattern":
                line += [f"(pattern, {size}: {hits[sizes == size].mean():.2f})" for size in ("medium", "large")]
        print(f"{name}: " + ", ".join(line))
    patterns = [HEAD_CLASSES["pattern"][row["pattern"]] for row in labels[:12]]
    print("first 12 patterns:", ", ".join(patterns))
    Path("work").mkdir(exist_ok=True)
    Image.fromarray(np.concatenate([strip(renders), strip(trips)], 0)).resize((12 * 128, 256), Image.NEAREST).save(
        "work/autoencoder-patterns.png"
    )


if __name__ == "__main__":
    main()
