"""Failed generations the judge must refuse: concepts drawn as noise squares and blobs in the concept's colours.

These are images a person rejects (no recognisable object) that the synthetic negatives of `negatives` may not
cover. They are generated once from concept files of a recipe known to fail (perfusion's embedded recipe before it
was mended: o*_V at 3e-2, every image a square of noise), looked at on their contact sheet, and stored as one small
array. Every fourth image is kept for validation and never trained on.

    python -m perfusion.world.hard_negatives --concepts old/mycat.safetensors old/mymug.safetensors ... \\
        [--per-concept 64] [--out src/perfusion/world/assets/hard_negatives.npz] [--sheet hard_negatives.png]

Labels: the object head reads NOTHING; every other head is ignored (what else such an image shows is not known).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .augment import augment
from .judge_data import IGNORE
from .judge_model import NOTHING, OBJECT_CLASSES, OBJECT_NAMES
from .prompts import standard_prompts

HARD_NEGATIVES_PATH = Path(__file__).resolve().parent / "assets" / "hard_negatives.npz"
VALIDATION_EVERY = 4  # image i is a validation image when i % 4 == 3


class HardNegatives:
    def __init__(self, images: np.ndarray, sources: list[str]):
        self.images = images  # (N, 64, 64, 3) uint8
        self.sources = sources  # per image, the concept token it was generated for
        self._tensors: dict[str, torch.Tensor] = {}  # per split, built once: training draws from it every step

    @staticmethod
    def exists(path: Path = HARD_NEGATIVES_PATH) -> bool:
        return Path(path).is_file()

    @classmethod
    def load(cls, path: Path = HARD_NEGATIVES_PATH) -> HardNegatives:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no hard negatives; build them with python -m perfusion.world.hard_negatives"
            )
        with np.load(path) as data:
            return cls(data["images"], [str(name) for name in data["sources"]])

    def save(self, path: Path = HARD_NEGATIVES_PATH) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=self.images, sources=np.array(self.sources))
        return path

    def indices(self, split: str) -> np.ndarray:
        every = np.arange(len(self.images))
        validation = every % VALIDATION_EVERY == VALIDATION_EVERY - 1
        return every[validation] if split == "validation" else every[~validation]

    def tensor(self, split: str) -> torch.Tensor:
        if split not in self._tensors:
            self._tensors[split] = (
                torch.from_numpy(self.images[self.indices(split)]).permute(0, 3, 1, 2).float() / 255.0
            )
        return self._tensors[split]

    def appended(
        self,
        images: torch.Tensor,
        targets: dict[str, torch.Tensor],
        count: int,
        generator: torch.Generator,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images`` and ``targets`` with ``count`` random hard negatives of ``split`` appended."""
        pool = self.tensor(split)
        chosen = pool[torch.randint(len(pool), (count,), generator=generator)]
        extra = {
            name: torch.full((count,), IGNORE, dtype=value.dtype)
            for name, value in targets.items()
            if name != "present"
        }
        extra["object"] = torch.full((count,), OBJECT_CLASSES.index(NOTHING), dtype=targets["object"].dtype)
        merged = {name: torch.cat([targets[name], extra[name]]) for name in extra}
        merged["present"] = torch.cat([targets["present"], torch.zeros(count, len(OBJECT_NAMES))])
        return torch.cat([images, chosen]), merged

    @torch.no_grad()
    def refused(self, net, split: str = "validation") -> float:
        """Share of the split's images whose object head reads NOTHING (under the judge's usual degradations)."""
        net.eval()
        logits, _ = net(augment(self.tensor(split), torch.Generator().manual_seed(7)))
        return float((logits["object"].argmax(-1) == OBJECT_CLASSES.index(NOTHING)).float().mean())


def generate(concept_paths: list[Path], per_concept: int, seed: int = 1000) -> tuple[HardNegatives, list]:
    """Images of each concept in one-object world prompts at several betas, from seeds the evaluations never use."""
    from perfusion.pipeline.generation import GenerationConfig
    from perfusion.pipeline.generation import generate as generate_images
    from perfusion.pipeline.loader import load_concepts, unload_concepts
    from perfusion.pipeline.models import open_pipeline
    from perfusion.world import default_model_path, lab_recipe

    pipe = open_pipeline(str(default_model_path()))
    pipe.set_progress_bar_config(disable=True)
    images, sources, rows = [], [], []
    betas = (0.5, 0.6, 0.7, 0.8)
    for path in concept_paths:
        concept = load_concepts(pipe, [path])[0]
        prompts = [
            spec
            for spec in standard_prompts(concept.supercategory, 4 * per_concept, seed)
            if spec.second_object is None
        ][:per_concept]
        cells = []
        for index, prompt in enumerate(prompts):
            config = GenerationConfig(num_inference_steps=25, guidance_scale=lab_recipe.GUIDANCE, seed=seed + index)
            beta = betas[index % len(betas)]
            image = generate_images(pipe, prompt.text(concept.token), config, {concept.token: (beta, None)})[0]
            images.append(np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.uint8))
            sources.append(concept.token)
            cells.append(
                (image, f"{'val ' if (len(images) - 1) % VALIDATION_EVERY == VALIDATION_EVERY - 1 else ''}b{beta}")
            )
        rows.append((concept.token, cells))
        unload_concepts(pipe, concept.token)
    return HardNegatives(np.stack(images), sources), rows


def main(argv: list[str] | None = None) -> None:
    from perfusion.sheets import SheetRow, write_sheet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=Path, nargs="+", required=True, help="concept files of a failing recipe")
    parser.add_argument("--per-concept", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HARD_NEGATIVES_PATH)
    parser.add_argument("--sheet", type=Path, default=Path("hard_negatives.png"))
    arguments = parser.parse_args(argv)
    negatives, rows = generate(arguments.concepts, arguments.per_concept)
    path = negatives.save(arguments.out)
    write_sheet(
        arguments.sheet, [SheetRow(token, cells) for token, cells in rows], "hard negatives (failed generations)"
    )
    print(f"{len(negatives.images)} images -> {path} ({path.stat().st_size // 1024} KB); look at {arguments.sheet}")


if __name__ == "__main__":
    main()
