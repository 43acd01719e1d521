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
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
)  # fmt: skip
SD15_TEXT = dict(  # CLIP ViT-L/14's text tower, as SD 1.x conditions on it
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu",
)  # fmt: skip
SD21_UNET = dict(SD15_UNET, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)  # 64 channels a head
SD21_TEXT = dict(  # OpenCLIP ViT-H/14's text tower without its last layer, as SD 2.x conditions on it
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
)  # fmt: skip
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, norm_num_groups=8,
)  # fmt: skip


def assemble_pipeline(tokenizer, text_config: dict, unet_config: dict, vae_blocks: int, prediction_type: str):
    """A StableDiffusionPipeline of random weights from configs, in memory."""
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text_config,
        )
    )  # fmt: skip
    unet = UNet2DConditionModel(cross_attention_dim=text_config["hidden_size"], **unet_config)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks, block_out_channels=(8, 16, 16, 16)[:vae_blocks],
        latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


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
    text_config = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                       hidden_act="gelu")  # fmt: skip
    unet_config = dict(TINY_UNET, attention_head_dim=(2, 4), use_linear_projection=True)
    pipe = assemble_pipeline(tokenizer, text_config, unet_config, vae_blocks=2, prediction_type="v_prediction")
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


def build_tiny_sdxl_pipeline(path: Path, width: int = 16, seed: int = 0) -> Path:
    """Random tiny SDXL-shaped pipeline: two text encoders (the second with projection, conditioning on their
    concatenated penultimate layers), a UNet with the text-and-time added condition and transformer depth 2 at its
    second resolution; saved, returns the folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizers = [write_tokenizer(path / f"_tokenizer_source_{n}", pad_token=pad) for n, pad in ((1, None), (2, "!"))]

    def text_config(tokenizer, **extra):
        return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, hidden_size=width,
                              intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **extra)  # fmt: skip

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), norm_num_groups=8, use_linear_projection=True,
        cross_attention_dim=2 * width, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + width,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        sample_size=16,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config(tokenizers[0])), tokenizer=tokenizers[0],
        text_encoder_2=CLIPTextModelWithProjection(text_config(tokenizers[1], projection_dim=width)),
        tokenizer_2=tokenizers[1], unet=unet, scheduler=EulerDiscreteScheduler(), force_zeros_for_empty_prompt=True,
    )  # fmt: skip
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


def sd15_shaped_pipeline(directory: Path, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5's UNet and text encoder shapes with random weights (a small VAE with the same 8x factor)."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(directory / "_tokenizer_source")
    return assemble_pipeline(tokenizer, SD15_TEXT, SD15_UNET, vae_blocks=4, prediction_type="epsilon")


def load_pipeline(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_corpus(count: int = 300, seed: int = 0) -> list[str]:
    """Captions from WORDS, for a fast covariance of the tiny text encoder."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def handmade_concept(pipe, token: str = "<mycat>", supercategory: str = "cat", seed: int = 0):
    """A concept with plausible numbers (i* near the supercategory's encoding) and random targets."""
    from perfusion.concept import Concept
    from perfusion.fingerprint import cross_attention_modules
    from perfusion.loader import pipeline_fingerprint
    from perfusion.text import encode, tokenize, word_positions

    generator = torch.Generator().manual_seed(seed)
    word = pipe.tokenizer(supercategory, add_special_tokens=False).input_ids
    ids = tokenize(pipe.tokenizer, [f"a photo of a {supercategory}"])
    with torch.no_grad():
        supercategory_encoding = encode(pipe.text_encoder, ids)[word_positions(ids, word, last_only=True)][0]
        embedding = pipe.text_encoder.get_input_embeddings().weight[word].mean(0)
    width = supercategory_encoding.numel()
    layers = cross_attention_modules(pipe.unet)
    return Concept(
        token=token,
        supercategory=supercategory,
        token_embedding=embedding + 0.5 * torch.randn(width, generator=generator) * embedding.std(),
        concept_encoding=supercategory_encoding + 0.3 * torch.randn(width, generator=generator) * supercategory_encoding.std(),
        supercategory_encoding=supercategory_encoding.clone(),
        value_targets={name: torch.randn(module.to_v.out_features, generator=generator) for name, module in layers.items()},
        base_fingerprint=pipeline_fingerprint(pipe),
    )


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
