import shutil

import pytest
import torch

from perfusion.world.basemodel import train_base as train
from perfusion.world.basemodel.config import ArchitectureConfig, UnetTrainingConfig
from perfusion.world.basemodel.data import families_source
from perfusion.world.model_path import FAMILIES_MODEL_DIR


@pytest.fixture
def tiny_architecture() -> ArchitectureConfig:
    """The base model's three networks at a few channels each, for training steps in tests."""
    return ArchitectureConfig(
        vae_block_out_channels=(8, 16, 16),
        vae_norm_num_groups=4,
        unet_block_out_channels=(16, 16, 32),
        unet_attention_heads=(1, 1, 2),
        unet_norm_num_groups=8,
        text_hidden_size=32,
        text_intermediate_size=64,
        text_layers=1,
        text_heads=2,
    )


@pytest.fixture
def train_tiny_heads(tmp_path, tiny_architecture):
    """Trains a tiny families UNet trainer with auxiliary heads (``settings``: UnetTrainingConfig fields) on four
    captions of one scene, saves it, and resumes a copy: returns (first step's losses, last step's, trainer,
    resumed)."""
    for part in ("tokenizer", "vae"):  # a checkpoint records which autoencoder its latents came from
        shutil.copytree(FAMILIES_MODEL_DIR / part, tmp_path / part)

    def run(texts: list[str], spec, steps: int = 30, **settings):
        config = UnetTrainingConfig(
            batch_size=4, unet_learning_rate=1e-3, text_learning_rate=3e-3, warmup_steps=0, **settings
        )
        torch.manual_seed(0)
        trainer = train.UnetTrainer(tmp_path, families_source(), tiny_architecture, config, print)
        latents = torch.randn(len(texts), 4, 16, 16)
        first = last = trainer.training_step(latents, texts, [spec] * len(texts))
        for _ in range(steps):
            last = trainer.training_step(latents, texts, [spec] * len(texts))
        trainer.save()
        resumed = train.UnetTrainer(tmp_path, families_source(), tiny_architecture, config, print)
        resumed.load(torch.load(trainer.checkpoint_path, weights_only=False))
        return first, last, trainer, resumed

    return run
