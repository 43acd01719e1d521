"""Probe: does re-rendering what the judge reads, and comparing it with the image, tell what a person rejects?

For each eye-labelled generated image (the audit split first, then a random part of the training split) the judge's
reading (category, colours, pattern, accessory, shape values, pose, facing, background, position, size) is drawn
as a scene, at 75 placements (shifts of up to 4 px, scales 0.85-1.15), and the best one compared with the image
after a 1.2-px blur: the mean absolute error over the image, and over the drawn object's mask. A failure should
match no drawing. Prints each score's AUC for "rejected by eye" beside the accept head's (docs/judge-families.md),
over all the images read and over the audit split alone: the accept head trained on the training split's labels, so
only the audit figures compare it fairly. Writes work/accept-by-synthesis.png (each image beside its best drawing).

    python benchmarks/accept_by_synthesis.py [JUDGE] [--images 400]
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from perfusion.world.families.categories import CATEGORIES
from perfusion.world.families.eye_labels import EyeLabels
from perfusion.world.families.eye_labels import ranking_auc as auc
from perfusion.world.families.instances import Instance
from perfusion.world.families.judge import JUDGE_PATH, Judge
from perfusion.world.families.palette import COLOURS
from perfusion.world.families.scenes import Placement, SceneSpec, render_with_mask

SHIFTS = (-4, -2, 0, 2, 4)
SCALES = (0.85, 1.0, 1.15)


def read_instance(reading, row: int) -> Instance:
    name = reading.label("category", row)
    accessory = None
    if CATEGORIES[name].accessory and reading.label("accessory", row):
        accessory = COLOURS[reading.label("accessory_colour", row)]
    return Instance(
        name,
        tuple(min(1.0, max(0.0, value)) for value in reading.shape(row).values()),
        COLOURS[reading.label("colour", row)],
        COLOURS[reading.label("second_colour", row)],
        reading.label("pattern", row),
        min(1.0, max(0.0, reading.pattern_scale(row))),
        accessory,
    )


def blurred(array: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(array).filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)


def best_drawing(reading, row: int, target: np.ndarray) -> tuple[float, float, np.ndarray]:
    instance = read_instance(reading, row)
    poses = instance.family.poses
    pose = reading.label("pose", row) if reading.label("pose", row) in poses else poses[0]
    best = (np.inf, np.inf, None)
    for dx in SHIFTS:
        for dy in SHIFTS:
            for scale in SCALES:
                spec = SceneSpec(
                    first=Placement(instance, pose, reading.label("facing", row), 0.0, dx, dy, scale),
                    background=reading.label("background", row),
                    position=reading.label("position", row),
                    size=reading.label("size", row),
                )
                image, mask = render_with_mask(spec)
                error = np.abs(blurred(np.asarray(image)) - target).mean(-1) / 255.0
                weight = np.asarray(mask, dtype=np.float32) / 255.0
                if error.mean() < best[0]:
                    best = (float(error.mean()), float((error * weight).sum() / max(1.0, weight.sum())), image)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("judge", nargs="?", default=JUDGE_PATH)
    parser.add_argument("--images", type=int, default=400)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    labels = EyeLabels.load()
    audit_rows = np.flatnonzero(labels.splits == "audit")
    train_rows = np.random.default_rng(0).permutation(np.flatnonzero(labels.splits == "train"))
    index = np.concatenate([audit_rows, train_rows])[: arguments.images]
    images, person = labels.images[index], labels.accepted[index]
    judge = Judge.load(arguments.judge)
    reading = judge.read(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    whole, masked, drawings = [], [], []
    for row in range(len(index)):
        error, object_error, drawing = best_drawing(reading, row, blurred(images[row]))
        whole.append(-error)
        masked.append(-object_error)
        drawings.append(np.asarray(drawing))
    audit = np.arange(len(index)) < len(audit_rows)
    scores = {
        "image error": np.array(whole),
        "object error": np.array(masked),
        "accept head": reading.probabilities["accept"][:, 1].numpy(),
    }
    for name, values in scores.items():
        print(
            f"{name}: AUC {auc(values, person):.3f} on all {len(index)}, {auc(values[audit], person[audit]):.3f} on the audit"
        )
    pairs = [np.concatenate([images[row], drawings[row]], 1) for row in range(min(40, len(index)))]
    pairs += [np.zeros_like(pairs[0])] * (-len(pairs) % 5)
    grid = np.concatenate([np.concatenate(pairs[i : i + 5], 1) for i in range(0, len(pairs), 5)], 0)
    Path("work").mkdir(exist_ok=True)
    Image.fromarray(grid).save("work/accept-by-synthesis.png")


if __name__ == "__main__":
    main()
