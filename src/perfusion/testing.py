"""Tiny Stable Diffusion pipelines built from configs (for tests and benchmarks): offline, seconds to build."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = (
    "a photo of the cat dog cup mug bird next to on red blue green sofa sleeping small large left right "
    "picture rendering painting with and in at background centre top bottom"
).split()


def write_tokenizer(directory: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges spell WORDS whole; any other text falls back to characters. ``pad_token``
    "!" pads as SD 2.x's OpenCLIP tokenizer does (SD 1.x pads with the end-of-text token)."""
    alphabet = sorted(ByteLevel.alphabet())  # CLIP's byte-level base alphabet
    vocab = alphabet + [character + "</w>" for character in alphabet]
    merges = []
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
                vocab.append(pair[0] + pair[1])
            symbols = [pair[0] + pair[1]] + symbols[2:]
    vocab = list(dict.fromkeys(vocab)) + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77, **extra)


SD15_UNET = dict(  # Stable Diffusion 1.5's UNet: 16 cross-attention layers of widths 320/640/1280
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
)
SD15_TEXT = dict(  # CLIP ViT-L/14's text tower, as SD 1.x conditions on it
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
)
SD21_UNET = dict(SD15_UNET, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)  # 64 channels a head
SD21_TEXT = dict(  # OpenCLIP ViT-H/14's text tower without its last layer, as SD 2.x conditions on it
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
)
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4,
    norm_num_groups=8,
)


def text_encoder_config(tokenizer, **config) -> CLIPTextConfig:
    """As SD 1.5's and SDXL's published text encoder configs: the legacy eos_token_id 2, under which transformers'
    CLIP pools at the largest token id (end-of-text, until concept tokens are added above it)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )


def tiny_vae(blocks: int) -> AutoencoderKL:
    """A small random autoencoder with ``blocks`` levels (a 2 ** (blocks - 1) downsampling factor)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 16, 16, 16)[:blocks],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def assemble_pipeline(tokenizer, text_config: dict, unet_config: dict, vae_blocks: int, prediction_type: str):
    """A StableDiffusionPipeline of random weights from configs, in memory."""
    text_encoder = CLIPTextModel(text_encoder_config(tokenizer, **text_config))
    unet = UNet2DConditionModel(cross_attention_dim=text_config["hidden_size"], **unet_config)
    vae = tiny_vae(vae_blocks)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(path: Path, width: int = 32, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Random tiny SD-1.x-shaped pipeline with cross-attention at two resolutions, saved; returns the folder."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(path / "_tokenizer_source")
    text_config = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4)
    pipe = assemble_pipeline(tokenizer, text_config, TINY_UNET, vae_blocks=2, prediction_type=prediction_type)
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


def build_tiny_sd2_pipeline(path: Path, width: int = 32, seed: int = 0) -> Path:
    """Random tiny SD-2.x-shaped pipeline: v-prediction, "!" padding, linear projections in the transformer blocks and
    a head size per resolution; saved, returns the folder."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(path / "_tokenizer_source", pad_token="!")
    text_config = dict(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"
    )
    unet_config = dict(TINY_UNET, attention_head_dim=(2, 4), use_linear_projection=True)
    pipe = assemble_pipeline(tokenizer, text_config, unet_config, vae_blocks=2, prediction_type="v_prediction")
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


SDXL_UNET = dict(  # SDXL base's UNet: 70 cross-attention layers (transformer depth 2 at 640 wide, 10 at 1280)
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_TEXT = dict(  # CLIP ViT-L/14's text tower, SDXL's first text encoder
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
)
SDXL_TEXT_2 = dict(  # OpenCLIP ViT-bigG/14's text tower with its projection, SDXL's second
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
TINY_SDXL_WIDTHS = (16, 24)  # the two text encoders' widths differ, as SDXL's 768 and 1280 do
TIME_EMBED = 8  # addition_time_embed_dim: six time ids of this width each


def assemble_sdxl_pipeline(tokenizers, text_configs: tuple[dict, dict], unet_config: dict, vae_blocks: int):
    """A StableDiffusionXLPipeline of random weights from configs, in memory (the second text encoder with its
    projection)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    vae = tiny_vae(vae_blocks)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_encoder_config(tokenizers[0], **text_configs[0])),
        tokenizer=tokenizers[0],
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(tokenizers[1], **text_configs[1])),
        tokenizer_2=tokenizers[1],
        unet=UNet2DConditionModel(**unet_config),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_sdxl_pipeline(path: Path, seed: int = 0) -> Path:
    """Random tiny SDXL-shaped pipeline, saved; returns the folder. Two text encoders of different widths (the second
    with projection, pads with "!"), conditioning on their concatenated penultimate layers; a UNet with the
    text-and-time added condition, cross-attention at two resolutions and transformer depth 2 at the second."""
    torch.manual_seed(seed)
    tokenizers = [write_tokenizer(path / f"_tokenizer_source_{n}", pad_token=pad) for n, pad in ((1, None), (2, "!"))]
    first, second = TINY_SDXL_WIDTHS
    text_configs = (
        dict(hidden_size=first, intermediate_size=2 * first, num_hidden_layers=2, num_attention_heads=2),
        dict(
            hidden_size=second,
            intermediate_size=2 * second,
            num_hidden_layers=3,
            num_attention_heads=2,
            hidden_act="gelu",
            projection_dim=second,
        ),
    )
    unet_config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2, 4),
        transformer_layers_per_block=(1, 1, 2),
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=first + second,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + second,
    )
    pipe = assemble_sdxl_pipeline(tokenizers, text_configs, unet_config, vae_blocks=2)
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


def sdxl_shaped_pipeline(directory: Path, seed: int = 0):
    """SDXL base's UNet and text-encoder shapes with random weights (a small VAE)."""
    torch.manual_seed(seed)
    tokenizers = [
        write_tokenizer(directory / f"_tokenizer_source_{n}", pad_token=pad) for n, pad in ((1, None), (2, "!"))
    ]
    return assemble_sdxl_pipeline(tokenizers, (SDXL_TEXT, SDXL_TEXT_2), SDXL_UNET, vae_blocks=4)


def sd15_shaped_pipeline(directory: Path, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5's UNet and text encoder shapes with random weights (a small VAE with the same 8x factor)."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(directory / "_tokenizer_source")
    return assemble_pipeline(tokenizer, SD15_TEXT, SD15_UNET, vae_blocks=4, prediction_type="epsilon")


def load_pipeline(folder: Path):
    """The saved pipeline (its own class: StableDiffusionPipeline, StableDiffusionXLPipeline), progress bars off."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_corpus(count: int = 300, seed: int = 0) -> list[str]:
    """Captions from WORDS, for a fast covariance of the tiny text encoder."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def handmade_concept(pipe, token: str = "<mycat>", supercategory: str = "cat", seed: int = 0):
    """A concept with plausible numbers (i* near the supercategory's encoding, v* near its embedding in each text
    encoder) and random targets."""
    from perfusion.concept.fingerprint import cross_attention_modules
    from perfusion.concept.format import Concept
    from perfusion.pipeline.conditioning import TextConditioning
    from perfusion.pipeline.fingerprint import pipeline_fingerprint
    from perfusion.pipeline.text import word_positions

    generator = torch.Generator().manual_seed(seed)
    text = TextConditioning.of(pipe)
    ids = text.tokenize([f"a photo of a {supercategory}"])
    embeddings = []
    with torch.no_grad():
        supercategory_encoding = text.encode(ids)[word_positions(ids[0], text.supercategory_ids(supercategory), True)][
            0
        ]
        for tower in text.towers:
            embedding = tower.word_embeddings(supercategory).mean(0)
            embeddings.append(embedding + 0.5 * torch.randn(embedding.numel(), generator=generator) * embedding.std())
    width = supercategory_encoding.numel()
    layers = cross_attention_modules(pipe.unet)
    return Concept(
        token=token,
        supercategory=supercategory,
        token_embeddings=embeddings,
        concept_encoding=supercategory_encoding
        + 0.3 * torch.randn(width, generator=generator) * supercategory_encoding.std(),
        supercategory_encoding=supercategory_encoding.clone(),
        value_targets={
            name: torch.randn(module.to_v.out_features, generator=generator) for name, module in layers.items()
        },
        base_fingerprint=pipeline_fingerprint(pipe),
    )


def routed_entries(pipe, prompts):
    """The router's entries (perfusion.pipeline.router.EncodedPrompt, None for a row without concepts) for ``prompts`` (text,
    or one (B, T) id tensor per text encoder) encoded by the pipeline's hooked text encoders, as the UNet would get
    them."""
    from perfusion.pipeline.conditioning import TextConditioning
    from perfusion.pipeline.loader import find_runtime

    text = TextConditioning.of(pipe)
    ids = text.tokenize(prompts) if isinstance(prompts[0], str) else prompts
    with torch.no_grad():
        states = text.encode(ids)
    return find_runtime(pipe).router.find(states)


def write_concept_images(directory: Path, count: int = 4, size: int = 16, alpha: bool = True) -> Path:
    """A red disc on varied backgrounds, in varied places; the alpha channel marks the disc."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:size, :size]
    for index in range(count):
        centre = rng.randint(size // 4, 3 * size // 4, size=2)
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (size // 4) ** 2
        pixels = np.empty((size, size, 3), np.uint8)
        pixels[:] = rng.randint(0, 255, size=3)
        pixels[disc] = (220, 30, 30)
        image = Image.fromarray(pixels)
        if alpha:
            image.putalpha(Image.fromarray(np.where(disc, 255, 40).astype(np.uint8)))
        image.save(directory / f"{index:02d}.png")
    return directory
