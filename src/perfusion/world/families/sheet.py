"""The families in one sheet: a row of training instances per category, then the reserved and stretch tiers.

python -m perfusion.world.families.sheet --out docs/sheets/families.png
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from perfusion.sheets import SheetRow, write_sheet

from .categories import CATEGORY_NAMES
from .instances import evaluation_instance, sample_training_instance, seen_instances, stretch_instance
from .scenes import photos


def _cell(instance, seed: int):
    image, _, _ = photos(instance, 1, seed=seed)[0]
    return image, instance.describe().split(";")[0]


def family_rows(per_row: int = 12) -> list[SheetRow]:
    rows = []
    for name in CATEGORY_NAMES:
        rng = random.Random(f"sheet/{name}")
        instances = [sample_training_instance(name, rng) for _ in range(per_row)]
        rows.append(
            SheetRow(f"{name}: training instances", [_cell(instance, i) for i, instance in enumerate(instances)])
        )
    rows.append(
        SheetRow("seen members (first of each category)", [_cell(seen_instances(n)[0], 0) for n in CATEGORY_NAMES])
    )
    rows.append(
        SheetRow(
            "reserved: evaluation seeds 1000, 1001",
            [_cell(evaluation_instance(n, seed), seed) for n in CATEGORY_NAMES[:6] for seed in (1000, 1001)],
        )
    )
    rows.append(
        SheetRow(
            "stretch tier (seeds 0, 1)",
            [_cell(stretch_instance(n, seed), seed) for n in CATEGORY_NAMES[:6] for seed in (0, 1)],
        )
    )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/sheets/families.png"))
    arguments = parser.parse_args(argv)
    print(write_sheet(arguments.out, family_rows(), title="The families world", columns=12))


if __name__ == "__main__":
    main()
