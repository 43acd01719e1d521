"""Scores for generated images of the micro world, read by the judge.

- Text alignment (the analogue of CLIP-T): the share of a prompt's stated attributes (background, position, size,
  second object) that the judge finds in each image.
- Recognised: the share of images in which the judge accepts an object (not NOTHING, "no recognisable object") and
  names the concept's own object, against every object of the world.
- Accepted: the share of images in which the judge accepts an object at all.
- Identity fidelity (the analogue of CLIP-I / DINO): judge-embedding cosine between generated and reference images,
  over the accepted images only (a square of the concept's colours must not score).

CLIP-I / CLIP-T for real models live in `perfusion.experiments.clip_metrics`; the Pareto plot of a beta sweep in
`perfusion.experiments.pareto`.
"""

from __future__ import annotations

import torch

from .catalog import CATEGORIES, world_object
from .judge import Judge, JudgeOutput
from .judge_model import NOTHING
from .prompts import PromptSpec


def _matches(found: str, wanted: str) -> bool:
    """An object name matches itself; a category word matches every member of the category."""
    return found == wanted or (found != NOTHING and wanted in CATEGORIES and world_object(found).category == wanted)


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
        hits["position"] = (
            count == 2
            and _matches(sides[prompt.position], prompt.supercategory)
            and _matches(sides[other], prompt.second_object)
        )
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


def named_objects(output: JudgeOutput, row: int) -> tuple[str, ...]:
    """What the judge names in one image: the object of a one-object image, the left and right objects of a pair
    (NOTHING where it sees no recognisable object)."""
    if output.label("count", row) == 1:
        return (output.label("object", row),)
    return output.label("left_object", row), output.label("right_object", row)


def accepted(output: JudgeOutput, row: int) -> bool:
    """The judge sees at least one recognisable object in the image."""
    return any(name != NOTHING for name in named_objects(output, row))


def recognised(output: JudgeOutput, row: int, object_name: str) -> bool:
    """The judge accepts an object and names ``object_name`` (exactly, among every object of the world)."""
    return object_name in named_objects(output, row)


def recognised_share(judge: Judge, images, object_name: str) -> float:
    """Share of images in which the judge recognises ``object_name``."""
    output = judge.run(images)
    hits = [recognised(output, row, object_name) for row in range(len(output.embeddings))]
    return sum(hits) / len(hits)


def accepted_fidelity(output: JudgeOutput, references: torch.Tensor) -> tuple[float, float]:
    """(fidelity over the accepted images, accepted share); fidelity is nan when the judge accepts none."""
    rows = [row for row in range(len(output.embeddings)) if accepted(output, row)]
    share = len(rows) / len(output.embeddings)
    if not rows:
        return float("nan"), share
    return embedding_similarity(output.embeddings[rows], references), share
