"""The shipped example concepts of the families world: four instances the base model never saw, in four categories.

Each is a reserved instance picked by seed (`evaluation_instance(category, seed)` with seeds the tuning and
evaluation ranges never use), and training never samples within EXAMPLE_EXCLUSION of it.
"""

from __future__ import annotations

from .instances import EXAMPLE_SEEDS, example_instances

__all__ = ["EXAMPLE_SEEDS", "example_instances"]
