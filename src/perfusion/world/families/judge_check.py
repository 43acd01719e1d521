"""Validation of the families judge on data it never trained on (issue 30, section 3):

- renders of reserved instances (new poses and scenes) recognised against their gallery (bar >= 0.95);
- each kind of negative (the object's colours without its shape) refused (bar >= 0.98 each);
- the per-head accuracy on clean renders of reserved instances, and how well it reads shape: the mean absolute
  error of the shape values, and the share read in their own third (where a caption's shape word is decided).

    python -m perfusion.world.families.judge_check [--instances 4] [--out lab-report/judge]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from perfusion.sheets import SheetRow, write_sheet
from perfusion.world.negatives import KINDS

from .categories import CATEGORY_NAMES, third
from .judge import Judge
from .judge_data import _negative_filter, instance_labels, one_object_spec, validation_instances
from .judge_net import HEAD_CLASSES
from .metrics import Gallery, attribute_match, match_share, stated_match
from .scenes import photos, render_with_mask

RENDERS_PER_INSTANCE = 4
NEGATIVES_PER_KIND = 100


def check(judge: Judge, instances_per_category: int = 4, out: Path | None = None) -> dict:
    recognised, matches, stated, cells, head_hits, shape_errors = [], [], [], [], {}, []
    for instance in validation_instances(instances_per_category):
        gallery = Gallery.build(instance, judge)
        shots = photos(instance, RENDERS_PER_INSTANCE, seed=99, sizes=("medium", "large"))  # not the gallery's seed 0
        images = [image for image, _, _ in shots]
        reading = judge.read(images)
        hits = gallery.recognised(reading)
        recognised += hits
        for row, (_, _, spec) in enumerate(shots):
            matches.append(attribute_match(reading, row, instance))
            stated.append(stated_match(reading, row, instance))
            read = reading.shape(row, instance.category)
            shape_errors += [(read[name], value) for name, value in instance.shape.items()]
            labels, _, _ = instance_labels(instance, spec.first)
            for head, target in labels.items():
                if target >= 0:
                    head_hits.setdefault(head, []).append(HEAD_CLASSES[head].index(reading.label(head, row)) == target)
        cells += [(image, f"{instance.category} {'ok' if hit else 'MISS'}") for image, hit in zip(images[:2], hits[:2])]
    refused, negative_cells = {}, []
    rng = random.Random("judge-check/negatives")
    for kind in KINDS:
        images = []
        for _ in range(NEGATIVES_PER_KIND):
            instance = validation_instances(1, first_seed=rng.randrange(10**9))[rng.randrange(len(CATEGORY_NAMES))]
            spec = one_object_spec(instance, rng)
            images.append(render_with_mask(spec, _negative_filter((kind,), rng))[0])
        reading = judge.read(images)
        refused[kind] = float(np.mean([not reading.accepted(row) for row in range(len(images))]))
        negative_cells += [
            (image, f"{kind} {'refused' if not reading.accepted(r) else 'ACCEPTED'}")
            for r, image in enumerate(images[:4])
        ]
    results = {
        "renders_recognised": float(np.mean(recognised)),
        "attribute_match": match_share(matches),
        "stated_match": match_share(stated),
        "shape_mae": float(np.mean([abs(read - value) for read, value in shape_errors])),
        "shape_third": float(np.mean([third(read) == third(value) for read, value in shape_errors])),
        "garbage_refused": refused,
        "garbage_refused_min": min(refused.values()),
        "heads": {head: float(np.mean(hits)) for head, hits in sorted(head_hits.items())},
        "instances": len(recognised) // RENDERS_PER_INSTANCE,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "judge_check.json").write_text(json.dumps(results, indent=1))
        write_sheet(
            out / "judge_check.png",
            [SheetRow("reserved renders", cells), SheetRow("negatives", negative_cells)],
            title="judge check: renders it never saw, and negatives",
            columns=16,
        )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=4, help="reserved instances per category")
    parser.add_argument("--judge", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("lab-report/judge"))
    arguments = parser.parse_args(argv)
    judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
    print(json.dumps(check(judge, arguments.instances, arguments.out), indent=1))


if __name__ == "__main__":
    main()
