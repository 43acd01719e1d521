"""The example concepts shipped with the package: held-out objects with a few "photos" each, as a user would give.

Layout of examples/<folder>/: 00.png, 01.png, ... (64x64 RGB photos), masks/00.png, ... (L, 255 on the object; same
file names), concept.json ({"token": "<mycat>", "supercategory": "cat", "object": "black cat"}).
Rebuild with `python -m perfusion.world.build_examples`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


@dataclass(frozen=True)
class ExampleConcept:
    token: str  # e.g. "<mycat>"
    supercategory: str  # category word, e.g. "cat"
    object: str  # catalog name of the held-out object, e.g. "black cat"
    directory: Path  # holds the photos; masks/ holds their masks

    @property
    def mask_dir(self) -> Path:
        return self.directory / "masks"

    def image_paths(self) -> list[Path]:
        return sorted(self.directory.glob("*.png"))


def examples_dir() -> Path:
    return EXAMPLES_DIR


def example_concepts() -> list[ExampleConcept]:
    """Every shipped example concept, in folder order."""
    concepts = []
    for meta_path in sorted(EXAMPLES_DIR.glob("*/concept.json")):
        meta = json.loads(meta_path.read_text())
        concepts.append(ExampleConcept(meta["token"], meta["supercategory"], meta["object"], meta_path.parent))
    return concepts


def example_concept(token_or_folder: str) -> ExampleConcept:
    """One example concept by its token ("<mycat>") or folder name ("mycat")."""
    for concept in example_concepts():
        if token_or_folder in (concept.token, concept.directory.name):
            return concept
    known = ", ".join(concept.token for concept in example_concepts())
    raise KeyError(f"no example concept {token_or_folder!r}; shipped: {known}")
