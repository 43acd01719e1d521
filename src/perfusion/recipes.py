"""A base model's own Perfusion defaults: ``perfusion_recipe.json`` in the model folder.

    {"training": {"steps": 300, "lr_embedding": 3e-4, ...},      # TrainingConfig's fields
     "generation": {"guidance_scale": 2.5, "composition": "regions"}}

``perfusion train`` / ``generate`` / ``sweep`` / ``eval`` read it when the model folder has one; flags given on the
command line override it, and what neither sets keeps the dataclasses' defaults (the SD1.5 recipe).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from perfusion.files import atomic_write

RECIPE_FILE = "perfusion_recipe.json"
GENERATION_FIELDS = ("num_inference_steps", "guidance_scale", "composition", "global_lock")


class RecipeError(ValueError):
    """A recipe file that cannot be used."""


@dataclass
class Recipe:
    training: dict = field(default_factory=dict)  # TrainingConfig's fields
    generation: dict = field(default_factory=dict)  # GENERATION_FIELDS

    def __post_init__(self):
        from perfusion.train import TrainingConfig

        known = {item.name for item in fields(TrainingConfig)}
        for name in self.training:
            if name not in known:
                raise RecipeError(f"unknown training setting {name!r} (TrainingConfig has no such field)")
        for name in self.generation:
            if name not in GENERATION_FIELDS:
                raise RecipeError(f"unknown generation setting {name!r} (known: {', '.join(GENERATION_FIELDS)})")


def read_recipe(model: str | Path) -> Recipe:
    """The model folder's recipe; an empty one when it has none."""
    path = Path(model) / RECIPE_FILE
    if not path.is_file():
        return Recipe()
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecipeError(f"{path}: not a readable recipe ({error})") from None
    if not isinstance(data, dict) or set(data) - {"training", "generation"}:
        raise RecipeError(f'{path}: a recipe holds "training" and "generation" objects only')
    if not all(isinstance(data.get(part, {}), dict) for part in ("training", "generation")):
        raise RecipeError(f'{path}: "training" and "generation" must be objects')
    try:
        return Recipe(data.get("training", {}), data.get("generation", {}))
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


def write_recipe(model: str | Path, recipe: Recipe) -> Path:
    path = Path(model) / RECIPE_FILE
    text = json.dumps({"training": recipe.training, "generation": recipe.generation}, indent=2) + "\n"
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))
    return path
