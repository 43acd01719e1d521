"""How much of a render the judge still reads after the base model regenerates it, by strength.

The judge trains on regenerated renders with every head labelled by the render's ground truth (regenerated.py).
This checks that assumption: a judge's reading of the regenerated images against those labels, head by head, at each
strength, beside its reading of the same renders before regeneration.

    python benchmarks/regenerated_labels.py [--judge J.safetensors] [--count 600]
"""

import argparse

import numpy as np
import torch

from perfusion.world.families.judge import JUDGE_PATH, Judge
from perfusion.world.families.judge_data import IGNORE
from perfusion.world.families.regenerated import HEADS, Regenerated, scene

HEADS_SHOWN = ("accept", "category", "colour", "pattern", "second_colour", "facing", "background", "position", "size")


def agreement(reading, targets: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    shares = {}
    for head in HEADS_SHOWN:
        column = targets[rows, HEADS.index(head)]
        known = column != IGNORE
        read = reading.probabilities[head][rows].argmax(-1).numpy()
        shares[head] = float((read[known] == column[known]).mean()) if known.any() else float("nan")
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default=JUDGE_PATH)
    parser.add_argument("--count", type=int, default=600, help="the store's first images (renders are redrawn)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    judge = Judge.load(arguments.judge)
    store = Regenerated.load()
    count = min(arguments.count, len(store))
    regenerated = judge.read(torch.from_numpy(store.images[:count]).permute(0, 3, 1, 2).float() / 255.0)
    strengths = store.strengths[:count]
    print("head".ljust(14) + "".join(f"{f'strength {s:.2f}':>16}" for s in np.unique(strengths)) + f"{'renders':>10}")
    drawn = np.stack([np.asarray(scene(int(seed))[0]) for seed in store.seeds[:count]])
    renders = agreement(
        judge.read(torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255.0), store.targets, np.arange(count)
    )
    by_strength = {
        s: agreement(regenerated, store.targets, np.flatnonzero(strengths == s)) for s in np.unique(strengths)
    }
    for head in HEADS_SHOWN:
        line = head.ljust(14) + "".join(f"{by_strength[s][head]:>16.2f}" for s in by_strength)
        print(line + f"{renders[head]:>10.2f}")


if __name__ == "__main__":
    main()
