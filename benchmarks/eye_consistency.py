"""How well the eye agrees with itself, and the judge with the eye where the eye is sure (issue 30, section 3).

    python benchmarks/eye_consistency.py --collection work/eye-audit --second 0,1,7,... [--judge J.safetensors ...]

A collection's images (``images.npz``) were labelled twice by a person, blind to the first labels: ``rejected.txt``
holds the first rejections, ``--second`` the second. Prints the eye's test-retest agreement, then for each judge its
agreement and false accepts against each labelling and on the consensus (the images both labellings agree on).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perfusion.world.families.eye_labels import verdict_scores


def verdicts(rejected: set[int], count: int) -> np.ndarray:
    return np.array([n not in rejected for n in range(count)])


def scores(judged: np.ndarray, person: np.ndarray) -> dict[str, float]:
    return {name: round(value, 3) for name, value in verdict_scores(judged, person).items()}


def main(argv=None) -> None:
    from PIL import Image

    from perfusion.world.families.judge import Judge

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--second", required=True, help="comma-separated image numbers rejected the second time")
    parser.add_argument("--judge", type=Path, nargs="*", default=[])
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = np.load(arguments.collection / "images.npz")["images"]
    first_text = (arguments.collection / "rejected.txt").read_text()
    first = verdicts({int(n) for n in first_text.split(",") if n.strip()}, len(images))
    second = verdicts({int(n) for n in arguments.second.split(",") if n.strip()}, len(images))
    sure = first == second
    print("eye, second labelling against the first:", scores(second, first))
    for path in arguments.judge:
        reading = Judge.load(path).read([Image.fromarray(image) for image in images])
        judged = np.array([reading.accepted(row) for row in range(len(images))])
        print(path.name, "against the first:", scores(judged, first))
        print(path.name, "against the second:", scores(judged, second))
        print(path.name, "on the consensus:", scores(judged[sure], first[sure]))


if __name__ == "__main__":
    main()
