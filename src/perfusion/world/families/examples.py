"""The shipped example concepts of the families world: four instances the base model never saw, in four categories.

Each is a reserved instance picked by seed (`evaluation_instance(category, seed)` with seeds the tuning and
evaluation ranges never use), and training never samples within EXAMPLE_EXCLUSION of it.
"""

from __future__ import annotations

import functools

EXAMPLE_SEEDS = {"mycat": ("cat", 500), "mydog": ("dog", 500), "mymug": ("mug", 500), "myteddy": ("teddy", 500)}


@functools.cache
def example_instances() -> dict:
    """folder name -> Instance of each shipped example."""
    from .instances import evaluation_instance

    return {folder: evaluation_instance(category, seed) for folder, (category, seed) in EXAMPLE_SEEDS.items()}
