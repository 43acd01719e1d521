"""Scores for generated images of the micro world, read by the judge.

- Text alignment (the analogue of CLIP-T): the share of a prompt's stated attributes (background, position, size,
  second object) that the judge finds in each image.
- Identity fidelity (the analogue of CLIP-I / DINO): judge-embedding cosine between generated and reference images,
  and identity top-1 among the members of the concept's category.

CLIP-I / CLIP-T for real models live in `clip_metrics`; the Pareto plot of a beta sweep in `pareto`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .catalog import CATEGORIES, OBJECTS, members, world_object
from .judge import Judge, JudgeOutput
from .judge_model import OBJECT_NAMES
from .prompts import PromptSpec


def _matches(found: str, wanted: str) -> bool:
    """An object name matches itself; a category word matches every member of the category."""
    return found == wanted or (wanted in CATEGORIES and world_object(found).category == wanted)


def attribute_hits(output: JudgeOutput, row: int, prompt: PromptSpec) -> dict[str, bool]:
    """For one image, whether the judge finds each attribute the prompt states."""
    count = output.label("count", row)
    hits = {}
    if prompt.background is not None:
        hits["background"] = output.label("background", row) == prompt.background
    if prompt.size is not None:
        hits["size"] = output.label("size", row) == prompt.size
    if prompt.second_object is None:
        if prompt.position is not None:
            hits["position"] = count == 1 and output.label("position", row) == prompt.position
        return hits
    sides = {"left": output.label("left_object", row), "right": output.label("right_object", row)}
    hits["second_object"] = count == 2 and any(_matches(name, prompt.second_object) for name in sides.values())
    if prompt.position is not None:
        other = "right" if prompt.position == "left" else "left"
        hits["position"] = (count == 2 and _matches(sides[prompt.position], prompt.supercategory)
                            and _matches(sides[other], prompt.second_object))  # fmt: skip
    return hits


def alignment_per_image(output: JudgeOutput, prompt: PromptSpec) -> list[float]:
    if not prompt.stated:
        raise ValueError("the prompt states no attribute: alignment is undefined")
    scores = []
    for row in range(len(output.embeddings)):
        hits = attribute_hits(output, row, prompt)
        scores.append(sum(hits.values()) / len(hits))
    return scores


def text_alignment(judge: Judge, images, prompt: PromptSpec) -> float:
    """Mean share of the prompt's stated attributes found in the images (1.0: all of them, in every image)."""
    scores = alignment_per_image(judge.run(images), prompt)
    return sum(scores) / len(scores)


def embedding_similarity(generated: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine over all (generated, reference) pairs of L2-normalised embeddings."""
    return float((generated @ references.T).mean())


def identity_fidelity(judge: Judge, images, reference_images) -> float:
    """Judge-embedding cosine between generated images and the concept's reference images, averaged over pairs."""
    return embedding_similarity(judge.run(images).embeddings, judge.run(reference_images).embeddings)


def identity_scores(output: JudgeOutput, row: int) -> torch.Tensor:
    """Per-object evidence in one image: the identity head for one-object images, the better of the left and right
    heads for two-object ones."""
    if output.label("count", row) == 1:
        return output.probabilities["object"][row]
    return torch.maximum(output.probabilities["left_object"][row], output.probabilities["right_object"][row])


def identity_top1(judge: Judge, images, object_name: str) -> float:
    """Share of images in which the judge ranks ``object_name`` first among the members of its category."""
    candidates = [OBJECT_NAMES.index(name) for name in members(world_object(object_name).category)]
    target = candidates.index(OBJECT_NAMES.index(object_name))
    output = judge.run(images)
    hits = [int(identity_scores(output, row)[candidates].argmax()) == target for row in range(len(output.embeddings))]
    return sum(hits) / len(hits)


@dataclass(frozen=True)
class ConceptScores:
    alignment: float
    fidelity: float
    top1: float


def score_concept(judge: Judge, images_per_prompt: dict[PromptSpec, list], reference_images, object_name: str) -> ConceptScores:
    """Alignment, fidelity and top-1 of a concept's generated images, averaged over prompts (equal weight each)."""
    if object_name not in OBJECTS:
        raise KeyError(f"unknown object {object_name!r}")
    if not images_per_prompt:
        raise ValueError("no generated images to score")
    references = judge.run(reference_images).embeddings
    alignment, fidelity, top1 = [], [], []
    for prompt, images in images_per_prompt.items():
        output = judge.run(images)
        scores = alignment_per_image(output, prompt)
        alignment.append(sum(scores) / len(scores))
        fidelity.append(embedding_similarity(output.embeddings, references))
        top1.append(identity_top1(judge, images, object_name))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return ConceptScores(mean(alignment), mean(fidelity), mean(top1))
