"""Textual Inversion (Gal et al., 2022): learn only the new token's input embedding.

Ships one vector under the token's name, the file diffusers' ``load_textual_inversion`` reads. No strength
knob: guidance (or the training length) is what a user can turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from perfusion.baselines.artifact import check_base, personalised, read
from perfusion.baselines.training import BaselineConfig, BaselineResult, BaselineTrainer, NewTokenEmbedding
from perfusion.pipeline.loader import embedding_frozen_state_kept
from perfusion.training.images import TrainingImage
from perfusion.training.trainer import DEFAULT_TEMPLATES

METHOD = "textual-inversion"
KNOB = "guidance"


@dataclass
class TextualInversionConfig(BaselineConfig):
    """diffusers' textual_inversion example at SD1.5 scale: 3000 steps, batch 4 (1 x 4), lr 5e-3."""

    steps: int = 3000
    batch_size: int = 1
    gradient_accumulation: int = 4
    lr: float = 5e-3  # the paper's base rate; large because only one 768-vector moves
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # the paper's varied "a photo of a {}" prompts
    initializer: str | None = None  # word whose embedding starts the new row; None: the supercategory

    @classmethod
    def for_small_model(cls, **overrides) -> "TextualInversionConfig":
        """An untuned starting point for a tiny model: fewer steps than SD1.5's recipe. Its rate is not scaled to
        the embeddings (the embedded model's rows are 0.3-0.9 in norm, like SD1.5's ~0.4): tune rate and length
        on tuning concepts, as every method in benchmarks/compare.py."""
        return cls(**{"steps": 400, "lr": 1e-3, **overrides})


class TextualInversionTrainer(BaselineTrainer):
    method = METHOD
    text_trainable = True

    @property
    def phrase(self) -> str:
        return self.token  # "a photo of a <mycat>": the token stands for the whole noun

    def setup(self) -> list[dict]:
        self.embedding = NewTokenEmbedding(self.pipe, self.token, self.config.initializer or self.supercategory)
        return [{"params": [self.embedding.vector]}]

    def teardown(self) -> None:
        self.embedding.remove()

    def artifact(self) -> dict[str, torch.Tensor]:
        return {self.token: self.embedding.vector}


CONFIG = TextualInversionConfig


def train(
    pipe,
    images: list[TrainingImage],
    token: str,
    supercategory: str,
    config: TextualInversionConfig | None = None,
    progress: bool = True,
    on_snapshot=None,
) -> BaselineResult:
    """Learn ``token``'s embedding; the pipeline's weights and tokenizer are left as they were."""
    return TextualInversionTrainer(pipe, images, token, supercategory, config or TextualInversionConfig()).run(
        progress, on_snapshot
    )


def apply(pipe, path: str | Path):
    """Add the token to ``pipe`` (diffusers' textual-inversion loader); returns the prompt handle."""
    tensors, metadata = read(path, METHOD)
    check_base(pipe, metadata, path)
    token = metadata["token"]
    with embedding_frozen_state_kept(pipe.text_encoder):
        pipe.load_textual_inversion(
            tensors[token].to(pipe.text_encoder.dtype),
            token=token,
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
        )
    return personalised(metadata)
