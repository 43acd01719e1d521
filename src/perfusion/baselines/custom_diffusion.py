"""Custom Diffusion (Kumari et al., 2023): fine-tune every cross-attention K and V projection plus a new token.

diffusers' ``CustomDiffusionAttnProcessor2_0`` holds the trained copies of attn2's to_k/to_v (started from the
base weights) and is swapped in with ``set_attn_processor``, the stock processors swapped back afterwards: the
pipeline's own weights never change. Prompts say "<mycat> cat" (a modifier token before the class word).
The artifact holds those K/V weights under diffusers' key names (``unet.load_attn_procs`` layout) and the
token's embedding under its name. The knob: interpolating the K/V weights, W0 + s (W - W0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

from perfusion.baselines.artifact import check_base, personalised, read
from perfusion.baselines.training import BaselineConfig, BaselineResult, BaselineTrainer, NewTokenEmbedding
from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.pipeline.loader import embedding_frozen_state_kept
from perfusion.training.images import TrainingImage

METHOD = "custom-diffusion"
KNOB = "scale"
PROJECTIONS = ("to_k", "to_v")


@dataclass
class CustomDiffusionConfig(BaselineConfig):
    """The paper's single-concept recipe at SD1.5 scale: 250 steps, batch 8, lr 8e-5 (1e-5 x batch), with
    regularisation images of the class (the paper retrieved real ones; here the base model makes them) and its
    resize augmentation (8 rescaled copies of each image, drawn once; diffusers' script draws afresh at each use)."""

    steps: int = 250
    batch_size: int = 2
    gradient_accumulation: int = 4
    lr: float = 8e-5  # K/V weights and the token's embedding alike, as in diffusers' example
    prior_preservation: bool = True
    num_class_images: int = 200
    templates: tuple[str, ...] = ("photo of a {}",)
    initializer: str = "ktn"  # a rare word whose embedding starts the modifier token (diffusers' example)
    rescale_variants: int = 8

    @classmethod
    def for_small_model(cls, **overrides) -> "CustomDiffusionConfig":
        """Starting point for a tiny model (unverified: tune on a held-out concept)."""
        return cls(**{"steps": 250, "lr": 1e-3, "num_class_images": 50, "class_inference_steps": 20, **overrides})


def cross_attention_layers(unet) -> dict[str, torch.nn.Module]:
    """attn2 modules by processor name ("...attn2.processor"), the names diffusers' loader uses."""
    return {f"{name}.processor": module for name, module in cross_attention_modules(unet).items()}


def custom_processor(attention, weights: dict[str, torch.Tensor]) -> CustomDiffusionAttnProcessor2_0:
    processor = CustomDiffusionAttnProcessor2_0(
        train_kv=True,
        train_q_out=False,
        hidden_size=attention.to_k.out_features,
        cross_attention_dim=attention.to_k.in_features,
    )
    processor.load_state_dict(
        {f"{projection}_custom_diffusion.weight": weights[projection] for projection in PROJECTIONS}
    )
    return processor.to(attention.to_k.weight.device)


def install(unet, weights: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Custom Diffusion processors on the attn2 layers (self-attention keeps its own); returns them by name."""
    layers = cross_attention_layers(unet)
    custom = {name: custom_processor(layers[name], weights[name]) for name in layers}
    unet.set_attn_processor({name: custom.get(name, processor) for name, processor in unet.attn_processors.items()})
    return custom


class CustomDiffusionTrainer(BaselineTrainer):
    method = METHOD
    text_trainable = True

    @property
    def phrase(self) -> str:
        return f"{self.token} {self.supercategory}"

    def setup(self) -> list[dict]:
        unet = self.pipe.unet
        self.originals = dict(unet.attn_processors)
        base = {
            name: {projection: getattr(module, projection).weight.detach().float() for projection in PROJECTIONS}
            for name, module in cross_attention_layers(unet).items()
        }
        self.processors = install(unet, base)
        self.embedding = NewTokenEmbedding(self.pipe, self.token, self.config.initializer)
        weights = [parameter for processor in self.processors.values() for parameter in processor.parameters()]
        return [{"params": weights + [self.embedding.vector]}]

    def teardown(self) -> None:
        self.pipe.unet.set_attn_processor(self.originals)
        self.embedding.remove()

    def artifact(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"{name}.{key}": value
            for name, processor in self.processors.items()
            for key, value in processor.state_dict().items()
        }
        return {**tensors, self.token: self.embedding.vector}


CONFIG = CustomDiffusionConfig


def train(
    pipe,
    images: list[TrainingImage],
    token: str,
    supercategory: str,
    config: CustomDiffusionConfig | None = None,
    progress: bool = True,
    on_snapshot=None,
) -> BaselineResult:
    """Train K/V of every cross-attention layer and ``token``; the pipeline is left as it was."""
    return CustomDiffusionTrainer(pipe, images, token, supercategory, config or CustomDiffusionConfig()).run(
        progress, on_snapshot
    )


def apply(pipe, path: str | Path):
    """Install the trained K/V processors and the token in ``pipe``; ``set_strength(s)`` gives W0 + s (W - W0)."""
    tensors, metadata = read(path, METHOD)
    check_base(pipe, metadata, path)
    token, unet = metadata["token"], pipe.unet
    layers = cross_attention_layers(unet)
    base = {
        name: {p: getattr(module, p).weight.detach().float() for p in PROJECTIONS} for name, module in layers.items()
    }
    trained = {name: {p: tensors[f"{name}.{p}_custom_diffusion.weight"] for p in PROJECTIONS} for name in layers}
    processors = install(unet, trained)
    with embedding_frozen_state_kept(pipe.text_encoder):
        pipe.load_textual_inversion(
            tensors[token].to(pipe.text_encoder.dtype),
            token=token,
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
        )

    @torch.no_grad()
    def set_strength(scale: float) -> None:
        for name, processor in processors.items():
            for p in PROJECTIONS:
                weight = base[name][p] + scale * (trained[name][p] - base[name][p])
                getattr(processor, f"{p}_custom_diffusion").weight.copy_(weight)

    return personalised(metadata, set_strength)
