"""DreamBooth (Ruiz et al., 2023): fine-tune the whole UNet on "a photo of sks cat", with prior preservation.

Prior preservation: class images made by the base model from "a photo of a cat" are fitted alongside (loss
weight 1.0), so the class word keeps its meaning. The text encoder stays frozen (diffusers' default). Training
works on a deep copy of the UNet, so the pipeline passed in is unchanged; the artifact is that whole UNet.
No strength knob: guidance (or the training length) is what a user can turn.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from perfusion.baselines.artifact import check_base, personalised, read
from perfusion.baselines.training import BaselineConfig, BaselineResult, RareWordTrainer
from perfusion.training.images import TrainingImage

METHOD = "dreambooth"
KNOB = "guidance"


@dataclass
class DreamBoothConfig(BaselineConfig):
    """diffusers' train_dreambooth example at SD1.5 scale: 800 steps with prior preservation, lr 5e-6."""

    steps: int = 800
    lr: float = 5e-6
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 200
    identifier: str = "sks"  # a rare word the tokenizer already has: prompts say "a photo of sks cat"

    @classmethod
    def for_small_model(cls, **overrides) -> "DreamBoothConfig":
        """An untuned starting point for a tiny model: fewer steps and class images than SD1.5's recipe, and 10x
        its rate (Adam's step does not depend on the network's size, so this is a guess, not a scaling): tune rate
        and length on tuning concepts, as every method in benchmarks/compare.py."""
        return cls(**{"steps": 400, "lr": 5e-5, "num_class_images": 50, "class_inference_steps": 20, **overrides})


class DreamBoothTrainer(RareWordTrainer):
    method = METHOD

    @property
    def unet(self):
        return self.trained_unet

    def setup(self) -> list[dict]:
        self.trained_unet = copy.deepcopy(self.pipe.unet).float()  # the caller's UNet is never touched
        self.trained_unet.requires_grad_(True).train()
        return [{"params": list(self.trained_unet.parameters())}]

    def teardown(self) -> None:
        self.trained_unet = None

    def artifact(self) -> dict[str, torch.Tensor]:
        return self.trained_unet.state_dict()


CONFIG = DreamBoothConfig


def train(
    pipe,
    images: list[TrainingImage],
    token: str,
    supercategory: str,
    config: DreamBoothConfig | None = None,
    progress: bool = True,
    on_snapshot=None,
) -> BaselineResult:
    """Fine-tune a copy of the UNet; ``token`` is how the benchmark's prompts name the concept."""
    return DreamBoothTrainer(pipe, images, token, supercategory, config or DreamBoothConfig()).run(
        progress, on_snapshot
    )


def apply(pipe, path: str | Path):
    """Replace ``pipe``'s UNet weights by the fine-tuned ones (use a fresh pipeline); returns the prompt handle."""
    tensors, metadata = read(path, METHOD)
    check_base(pipe, metadata, path)
    pipe.unet.load_state_dict({name: tensor.to(pipe.unet.dtype) for name, tensor in tensors.items()})
    return personalised(metadata)
