"""Scoring generated images against a prompt and the concept's own images: the world judge or CLIP."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from perfusion.experiments.prompts import EvalPrompt


@dataclass(frozen=True)
class Scores:
    alignment: float  # world: share of stated attributes found; CLIP: CLIP-T with the supercategory word
    fidelity: float  # world: judge-embedding cosine to the concept images; CLIP: CLIP-I
    top1: float | None = None  # world only: identity top-1 among the members of the concept's category
    # Each metric per prompt, in prompt order (what the means above average; a sweep's trend needs them paired).
    per_prompt: dict[str, tuple[float, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_prompts(cls, alignment: list[float], fidelity: list[float], top1: list[float] | None = None) -> Scores:
        """Means of per-prompt values, keeping those values (top1 left out when empty or None)."""
        per_prompt = {"alignment": tuple(alignment), "fidelity": tuple(fidelity), **({"top1": tuple(top1)} if top1 else {})}
        return cls(mean(alignment), mean(fidelity), mean(top1) if top1 else None, per_prompt)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


class WorldScorer:
    """The micro world's judge (alignment needs prompts that state attributes)."""

    name = "world judge"
    size = 64

    def __init__(self, object_name: str | None = None):
        from perfusion.world.judge import Judge

        self.judge = Judge.load()
        self.object_name = object_name

    def fit(self, images: list[Image.Image]) -> list[Image.Image]:
        return [image if image.size == (self.size, self.size) else image.resize((self.size, self.size)) for image in images]

    def score(self, images_by_prompt: dict[EvalPrompt, list[Image.Image]], references: list[Image.Image], supercategory: str):
        from perfusion.world.metrics import alignment_per_image, embedding_similarity, identity_top1

        missing = [prompt.template for prompt in images_by_prompt if prompt.spec is None]
        if missing:
            raise ValueError(f"the world judge needs prompts that state attributes (JSON Lines); not: {missing[0]!r}")
        reference_embeddings = self.judge.run(self.fit(references)).embeddings
        alignment, fidelity, top1 = [], [], []
        for prompt, images in images_by_prompt.items():
            output = self.judge.run(self.fit(images))
            alignment.append(mean(alignment_per_image(output, prompt.spec)))
            fidelity.append(embedding_similarity(output.embeddings, reference_embeddings))
            if self.object_name:
                top1.append(identity_top1(self.judge, self.fit(images), self.object_name))
        return Scores.from_prompts(alignment, fidelity, top1)


class ClipScoring:
    """CLIP-I and CLIP-T (the paper's protocol) with a CLIP model from a local folder."""

    name = "CLIP"

    def __init__(self, path):
        from perfusion.world.clip_metrics import ClipScorer

        self.clip = ClipScorer.load(path)

    def score(self, images_by_prompt: dict[EvalPrompt, list[Image.Image]], references: list[Image.Image], supercategory: str):
        alignment = [self.clip.clip_t(images, prompt.text(supercategory)) for prompt, images in images_by_prompt.items()]
        fidelity = [self.clip.clip_i(images, references) for images in images_by_prompt.values()]
        return Scores.from_prompts(alignment, fidelity)
