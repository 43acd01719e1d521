"""Scoring generated images against a prompt and the concept's own images: the world judge or CLIP."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image

from perfusion.experiments.prompt_sets import EvalPrompt


@dataclass(frozen=True)
class Scores:
    alignment: float  # world: share of stated attributes found; CLIP: CLIP-T with the supercategory word
    fidelity: float  # world: judge-embedding cosine to the concept images over the accepted images; CLIP: CLIP-I;
    # families: attribute match
    recognised: float | None = (
        None  # world only: share of images where the judge accepts an object and names the concept
    )
    accepted: float | None = None  # world only: share of images where the judge accepts any object (fidelity's base)
    # Each metric per prompt, in prompt order (what the means above average; a sweep's trend needs them paired).
    per_prompt: dict[str, tuple[float, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_prompts(
        cls,
        alignment: list[float],
        fidelity: list[float],
        recognised: list[float] | None = None,
        accepted: list[float] | None = None,
    ) -> Scores:
        """Means of per-prompt values, keeping those values (recognised / accepted left out when empty or None).
        A prompt whose fidelity is nan (no image accepted) is left out of the fidelity mean."""
        per_prompt = {"alignment": tuple(alignment), "fidelity": tuple(fidelity)}
        per_prompt.update(
            {name: tuple(values) for name, values in (("recognised", recognised), ("accepted", accepted)) if values}
        )
        return cls(
            mean(alignment),
            mean(fidelity),
            mean(recognised) if recognised else None,
            mean(accepted) if accepted else None,
            per_prompt,
        )


def mean(values) -> float:
    """The mean of the finite values (nan when there are none)."""
    values = [value for value in values if not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


class WorldScorer:
    """The micro world's judge (alignment needs prompts that state attributes)."""

    name = "world judge"
    size = 64

    def __init__(self, object_name: str | None = None):
        from perfusion.world.judge import Judge

        self.judge = Judge.load()
        self.object_name = object_name

    def fit(self, images: list[Image.Image]) -> list[Image.Image]:
        return [
            image if image.size == (self.size, self.size) else image.resize((self.size, self.size)) for image in images
        ]

    def score(
        self, images_by_prompt: dict[EvalPrompt, list[Image.Image]], references: list[Image.Image], supercategory: str
    ):
        from perfusion.world.metrics import accepted_fidelity, alignment_per_image, recognised

        missing = [prompt.template for prompt in images_by_prompt if prompt.spec is None]
        if missing:
            raise ValueError(f"the world judge needs prompts that state attributes (JSON Lines); not: {missing[0]!r}")
        reference_embeddings = self.judge.run(self.fit(references)).embeddings
        alignment, fidelity, named, accepted = [], [], [], []
        for prompt, images in images_by_prompt.items():
            output = self.judge.run(self.fit(images))
            alignment.append(mean(alignment_per_image(output, prompt.spec)))
            prompt_fidelity, share = accepted_fidelity(output, reference_embeddings)
            fidelity.append(prompt_fidelity)
            accepted.append(share)
            if self.object_name:
                named.append(mean(float(recognised(output, row, self.object_name)) for row in range(len(images))))
        return Scores.from_prompts(alignment, fidelity, named, accepted)


class FamiliesScorer:
    """The families laboratory's judge: per prompt, the share of images recognised as the concept (accepted, right
    category, first in its gallery), the attribute match as fidelity, and the alignment with what the prompt states
    (perfusion.world.families.scoring). ``prompts`` maps each EvalPrompt to its ConceptPrompt (family_prompts)."""

    name = "families judge"

    def __init__(self, instance, prompts: dict, judge=None):
        from perfusion.world.families.judge import Judge
        from perfusion.world.families.scoring import Galleries

        self.instance, self.prompts = instance, prompts
        self.judge = judge or Judge.load()
        self.galleries = Galleries(self.judge)

    def score(
        self, images_by_prompt: dict[EvalPrompt, list[Image.Image]], references: list[Image.Image], supercategory: str
    ):
        from perfusion.world.families.scoring import score_concept_images

        alignment, fidelity, recognised = [], [], []
        for prompt, images in images_by_prompt.items():
            result = score_concept_images(self.judge, self.instance, self.prompts[prompt], images, self.galleries)
            alignment.append(mean(result.alignment))
            fidelity.append(mean(result.attribute_match))
            recognised.append(mean([float(hit) for hit in result.recognised]))
        return Scores.from_prompts(alignment, fidelity, recognised)


class ClipScoring:
    """CLIP-I and CLIP-T (the paper's protocol) with a CLIP model from a local folder."""

    name = "CLIP"

    def __init__(self, path):
        from perfusion.experiments.clip_metrics import ClipScorer

        self.clip = ClipScorer.load(path)

    def score(
        self, images_by_prompt: dict[EvalPrompt, list[Image.Image]], references: list[Image.Image], supercategory: str
    ):
        alignment = [
            self.clip.clip_t(images, prompt.text(supercategory)) for prompt, images in images_by_prompt.items()
        ]
        fidelity = [self.clip.clip_i(images, references) for images in images_by_prompt.values()]
        return Scores.from_prompts(alignment, fidelity)
