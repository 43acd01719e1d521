"""Write the shipped example concepts' folders: five photos of each reserved instance, with masks, and what it is.

python -m perfusion.world.families.build_examples [--out src/perfusion/world/families/examples]

Each folder holds 00.png ... 04.png (64x64, the instance in varied poses, grounds, places and sizes), masks/ with the
same names (white on the object), and concept.json (token, supercategory, the instance's parameters).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perfusion.files import atomic_write

from .examples import EXAMPLES_DIR, example_instances
from .scenes import photos

PHOTOS = 5


def write_example(folder: Path, name: str, instance, seed: int) -> None:
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for index, (image, mask, _) in enumerate(photos(instance, PHOTOS, seed)):
        atomic_write(folder / f"{index:02d}.png", lambda path, image=image: image.save(path, format="PNG"))
        atomic_write(folder / "masks" / f"{index:02d}.png", lambda path, mask=mask: mask.save(path, format="PNG"))
    about = {
        "token": f"<{name}>",
        "supercategory": instance.category,
        "object": instance.describe(),
        "instance": instance.to_dict(),
    }
    atomic_write(folder / "concept.json", lambda path: path.write_text(json.dumps(about, indent=2) + "\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(EXAMPLES_DIR))
    args = parser.parse_args()
    for seed, (name, instance) in enumerate(sorted(example_instances().items())):
        write_example(Path(args.out) / name, name, instance, 2023 + seed)
        print(f"{name}: {instance.describe()}")


if __name__ == "__main__":
    main()
