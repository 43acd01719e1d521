"""LoRA (Hu et al., 2021) on the UNet's attention projections, DreamBooth-style prompts ("a photo of sks cat").

peft's ``LoraConfig`` on to_q/to_k/to_v/to_out.0 of every attention layer, injected with diffusers'
``add_adapter`` and removed again with ``unload_lora`` after training, so the pipeline passed in keeps its plain
layers. The artifact is diffusers' LoRA file (``pipe.load_lora_weights`` reads it); the knob is the LoRA
scale, set through peft's adapter weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from perfusion.baselines.artifact import check_base, personalised, read
from perfusion.baselines.training import BaselineConfig, BaselineResult, RareWordTrainer
from perfusion.training.images import TrainingImage

METHOD = "lora"
KNOB = "scale"
ADAPTER = "baseline"  # the adapter's name while training


@dataclass
class LoraBaselineConfig(BaselineConfig):
    """diffusers' train_dreambooth_lora example at SD1.5 scale: rank 4, lr 1e-4, 500 steps, no prior images."""

    steps: int = 500
    lr: float = 1e-4
    rank: int = 4  # the comparison runs rank 4 and rank 16
    alpha: float | None = None  # LoRA alpha; None: equal to the rank (scale 1)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # every attention layer's projections
    identifier: str = "sks"  # a rare word the tokenizer already has: prompts say "a photo of sks cat"

    @classmethod
    def for_small_model(cls, **overrides) -> "LoraBaselineConfig":
        """Starting point for a tiny model (unverified: tune on a held-out concept)."""
        return cls(**{"steps": 400, "lr": 1e-3, **overrides})

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha or self.rank,
            init_lora_weights="gaussian",
            target_modules=list(self.target_modules),
        )


class LoraTrainer(RareWordTrainer):
    method = METHOD

    def setup(self) -> list[dict]:
        self.pipe.unet.add_adapter(self.config.peft_config(), adapter_name=ADAPTER)
        parameters = [parameter for name, parameter in self.pipe.unet.named_parameters() if "lora_" in name]
        for parameter in parameters:  # adapters stay fp32 under mixed precision
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        return [{"params": parameters}]

    def teardown(self) -> None:
        self.pipe.unet.unload_lora()  # back to the plain layers

    def artifact(self) -> dict[str, torch.Tensor]:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.pipe.unet, adapter_name=ADAPTER))
        return {f"unet.{name}": tensor for name, tensor in layers.items()}  # diffusers' key layout

    def run(self, progress: bool = True, on_snapshot=None) -> BaselineResult:
        result = super().run(progress, on_snapshot)
        adapter = {f"unet.{key}": value for key, value in self.config.peft_config().to_dict().items()}
        result.metadata["lora_adapter_metadata"] = json.dumps(adapter, default=sorted, sort_keys=True)
        return result


CONFIG = LoraBaselineConfig


def train(
    pipe,
    images: list[TrainingImage],
    token: str,
    supercategory: str,
    config: LoraBaselineConfig | None = None,
    progress: bool = True,
    on_snapshot=None,
) -> BaselineResult:
    """Train a LoRA of the UNet's attention; the pipeline passed in keeps its plain layers."""
    return LoraTrainer(pipe, images, token, supercategory, config or LoraBaselineConfig()).run(progress, on_snapshot)


def adapter_name(token: str) -> str:
    """The adapter's name once loaded: from the token ("<mycat>" -> "mycat"), so several LoRAs can be loaded."""
    return re.sub(r"\W", "", token) or ADAPTER


def apply(pipe, path: str | Path):
    """Load the LoRA into ``pipe`` (diffusers' loader, peft backend) as ``adapter_name(token)``; the handle's
    ``set_strength`` is its scale (and makes it the only active adapter: combine several with ``pipe.set_adapters``)."""
    path = Path(path)
    _, metadata = read(path, METHOD)
    check_base(pipe, metadata, path)
    name = adapter_name(metadata["token"])
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)

    def set_strength(scale: float) -> None:
        pipe.set_adapters([name], adapter_weights=[scale])

    return personalised(metadata, set_strength)
