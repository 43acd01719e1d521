"""The shipped example concepts of the families world: four instances the base model never saw, in four categories.

Each is a reserved instance picked by seed (`evaluation_instance(category, seed)` with seeds the tuning and
evaluation ranges never use), and training never samples within EXAMPLE_EXCLUSION of it.
"""

from __future__ import annotations

from pathlib import Path

from .instances import EXAMPLE_SEEDS, example_instances

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"  # one folder per example: photos, masks/, concept.json

__all__ = ["EXAMPLES_DIR", "EXAMPLE_SEEDS", "example_instances"]
