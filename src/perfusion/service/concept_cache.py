"""The concepts loaded in the service's running pipeline: a bounded set, least recently used out first.

Every user's concept goes in under a token of the service's own (``<pc{id}>``), so that two users' "<mycat>" never
meet; prompts are rewritten to it (perfusion.service.prompt_tokens). C^-1 is computed once when the service starts and
handed to every load: loading never recomputes it. Only the generation thread calls ``ensure``; anything else that
changes the pipeline holds the batcher's lock, so a batch in flight is never disturbed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import torch

from perfusion.concept.format import Concept
from perfusion.pipeline.loader import load_concepts, unload_concepts


def internal_token(concept_id: int) -> str:
    return f"<pc{concept_id}>"


class ConceptCache:
    def __init__(self, pipe, folder: Path, capacity: int, inverse_covariance: torch.Tensor):
        self.pipe, self.folder, self.capacity, self.inverse = pipe, Path(folder), capacity, inverse_covariance
        self.loaded: OrderedDict[int, str] = OrderedDict()  # concept id -> its token in the pipeline, oldest use first

    def path(self, concept_id: int) -> Path:
        return self.folder / f"{concept_id}.safetensors"

    def ensure(self, concept_ids: set[int]) -> dict[int, str]:
        """Load what is missing of ``concept_ids`` (making room first); their tokens."""
        for concept_id in concept_ids & set(self.loaded):
            self.loaded.move_to_end(concept_id)
        missing = sorted(concept_ids - set(self.loaded))
        if len(concept_ids) > self.capacity:
            raise ValueError(f"{len(concept_ids)} concepts in one batch, more than the {self.capacity} kept loaded")
        over = len(self.loaded) + len(missing) - self.capacity
        if over > 0:
            self.unload([concept_id for concept_id in self.loaded if concept_id not in concept_ids][:over])
        if missing:
            concepts = [replace(Concept.load(self.path(item)), token=internal_token(item)) for item in missing]
            load_concepts(self.pipe, concepts, inverse_covariance=self.inverse)
            for item in missing:
                self.loaded[item] = internal_token(item)
        return {concept_id: self.loaded[concept_id] for concept_id in concept_ids}

    def unload(self, concept_ids: list[int]) -> None:
        present = [concept_id for concept_id in concept_ids if concept_id in self.loaded]
        if present:
            unload_concepts(self.pipe, [self.loaded[concept_id] for concept_id in present])
            for concept_id in present:
                del self.loaded[concept_id]
