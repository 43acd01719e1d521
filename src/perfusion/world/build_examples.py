"""Re-create the shipped example concepts (held-out objects, a few photos and masks each) from the committed glyphs.

python -m perfusion.world.build_examples
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, replace

from .catalog import BACKGROUNDS, HELD_OUT, POSITIONS, SIZES, world_object
from .examples import EXAMPLES_DIR
from .scenes import SceneSpec, render_with_mask

# folder, token, held-out object
EXAMPLES = (
    ("mycat", "<mycat>", "black cat"),
    ("mydog", "<mydog>", "poodle"),
    ("mymug", "<mymug>", "beer mug"),
    ("mybird", "<mybird>", "peacock"),
)


@dataclass(frozen=True)
class PhotoConfig:
    photos: int = 5
    seed: int = 2023
    max_rotation: float = 15.0
    max_shift: float = 2.0


def photo_specs(name: str, config: PhotoConfig, rng: random.Random) -> list[SceneSpec]:
    """Varied one-object scenes of ``name``: distinct backgrounds, positions cycling, both sizes, flips."""
    backgrounds = rng.sample(tuple(BACKGROUNDS), config.photos)
    positions = rng.sample(POSITIONS, len(POSITIONS))
    specs = []
    for index in range(config.photos):
        base = SceneSpec(name, backgrounds[index], positions[index % len(positions)], SIZES[(index + 1) % len(SIZES)])
        specs.append(
            replace(
                base,
                dx=rng.uniform(-config.max_shift, config.max_shift),
                dy=rng.uniform(-config.max_shift, config.max_shift),
                rotation=rng.uniform(-config.max_rotation, config.max_rotation),
                flip=index % 2 == 1,
                texture=rng.choice(("plain", "gradient", "noise")),
                texture_angle=rng.uniform(0, 360),
                texture_seed=rng.randrange(2**31),
            )
        )
    return specs


def build(config: PhotoConfig = PhotoConfig()) -> None:
    for folder, token, name in EXAMPLES:
        if name not in HELD_OUT:
            raise ValueError(f"example {token} must use a held-out object, not {name!r}")
        directory = EXAMPLES_DIR / folder
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "masks").mkdir(parents=True)
        rng = random.Random(f"{config.seed}:{name}")
        for index, spec in enumerate(photo_specs(name, config, rng)):
            image, mask = render_with_mask(spec)
            image.save(directory / f"{index:02d}.png", optimize=True)
            mask.save(directory / "masks" / f"{index:02d}.png", optimize=True)
        meta = {"token": token, "supercategory": world_object(name).category, "object": name}
        (directory / "concept.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{token}: {config.photos} photos of the {name} in {directory}")


if __name__ == "__main__":
    build()
