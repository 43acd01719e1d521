import pytest

from perfusion.world.basemodel.config import ArchitectureConfig


@pytest.fixture
def tiny_architecture() -> ArchitectureConfig:
    """The base model's three networks at a few channels each, for training steps in tests."""
    return ArchitectureConfig(
        unet_block_out_channels=(16, 16, 32),
        unet_attention_heads=(1, 1, 2),
        unet_norm_num_groups=8,
        text_hidden_size=32,
        text_intermediate_size=64,
        text_layers=1,
        text_heads=2,
    )
