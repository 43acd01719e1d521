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
from perfusion.pipeline.generation import GenerationConfig
from perfusion.training.trainer import TrainingConfig

RECIPE_FILE = "perfusion_recipe.json"
GENERATION_FIELDS = ("num_inference_steps", "guidance_scale", "composition", "global_lock")


class RecipeError(ValueError):
    """A recipe file that cannot be used."""


@dataclass
class Recipe:
    training: dict = field(default_factory=dict)  # TrainingConfig's fields
    generation: dict = field(default_factory=dict)  # GENERATION_FIELDS

    def __post_init__(self):
        training = {item.name: item for item in fields(TrainingConfig)}
        generation = {item.name: item for item in fields(GenerationConfig) if item.name in GENERATION_FIELDS}
        for part, values, known, config in (
            ("training", self.training, training, TrainingConfig),
            ("generation", self.generation, generation, GenerationConfig),
        ):
            for name, value in values.items():
                if name not in known:
                    raise RecipeError(f"unknown {part} setting {name!r} (known: {', '.join(known)})")
                annotation = type_text(known[name].type)
                if not value_fits(value, annotation):
                    raise RecipeError(f"{part} setting {name!r} must be {annotation}, got {value!r}")
            try:
                config(**values)  # the dataclass's own checks (ranges, words needed with pairs, ...)
            except ValueError as error:
                raise RecipeError(f"{part}: {error}") from None

    def training_config(self, **overrides) -> TrainingConfig:
        """TrainingConfig with this recipe's settings, ``overrides`` on top (the dataclass's defaults for the rest)."""
        return TrainingConfig(**{**self.training, **overrides})


def type_text(annotation) -> str:
    """A field's annotation as written ("int", "int | None", "list[str]", "Literal['no', 'fp16']")."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def value_fits(value, annotation: str) -> bool:
    """Whether a JSON value suits a dataclass field's annotation (as written: "int | None", "list[str]", ...)."""
    for option in (part.strip() for part in annotation.split("|")):
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, float):
            return True
        if option == "str" and isinstance(value, str):
            return True
        if option == "list[str]" and isinstance(value, list) and all(isinstance(item, str) for item in value):
            return True
        if option.startswith("Literal[") and isinstance(value, str) and f"'{value}'" in option.replace('"', "'"):
            return True
    return False


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
