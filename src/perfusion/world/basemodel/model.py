"""Build the base model's networks from an ArchitectureConfig (or a training checkpoint) and write them as a diffusers
pipeline folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .config import ArchitectureConfig, saved_architecture

INITIAL_LOGVAR = -8.0  # posterior std exp(-4) ~ 0.02 at initialisation
BETA_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # SD1.x's


def build_vae(arch: ArchitectureConfig) -> AutoencoderKL:
    """SD's AutoencoderKL, with the posterior's log-variance starting at INITIAL_LOGVAR: from-scratch training with
    std ~1 sampling noise on latents of std ~1 blurs everything; the tiny KL weight would take long to undo it."""
    blocks = len(arch.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=arch.vae_block_out_channels,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_norm_num_groups,
        sample_size=arch.image_size,
        mid_block_add_attention=arch.vae_mid_attention,
    )
    with torch.no_grad():
        vae.quant_conv.weight[arch.latent_channels :].zero_()
        vae.quant_conv.bias[arch.latent_channels :].fill_(INITIAL_LOGVAR)
    return vae


def latent_size(arch: ArchitectureConfig) -> int:
    return arch.image_size // 2 ** (len(arch.vae_block_out_channels) - 1)


def build_unet(arch: ArchitectureConfig) -> UNet2DConditionModel:
    # diffusers' `attention_head_dim` is, for SD1.x-style UNets, the number of heads (a known misnomer).
    return UNet2DConditionModel(
        sample_size=latent_size(arch),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_block_out_channels,
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=arch.unet_down_block_types,
        up_block_types=arch.unet_up_block_types,
        attention_head_dim=arch.unet_attention_heads,
        norm_num_groups=arch.unet_norm_num_groups,
        cross_attention_dim=arch.text_hidden_size,
    )


def build_text_encoder(arch: ArchitectureConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden_size,
        intermediate_size=arch.text_intermediate_size,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def noise_schedule(arch: ArchitectureConfig) -> dict:
    """The scheduler settings training and sampling share."""
    return dict(
        num_train_timesteps=arch.num_train_timesteps,
        prediction_type=arch.prediction_type,
        rescale_betas_zero_snr=arch.zero_terminal_snr,
        timestep_spacing="trailing" if arch.zero_terminal_snr else "linspace",  # start sampling at t=999
        steps_offset=1,  # "trailing" ignores it; StableDiffusionPipeline rewrites any other value, with a warning
        **BETA_SCHEDULE,
    )


def build_training_scheduler(arch: ArchitectureConfig) -> DDPMScheduler:
    return DDPMScheduler(clip_sample=False, **noise_schedule(arch))


def build_sampling_scheduler(arch: ArchitectureConfig) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2M) in its stochastic form: on the families model (UNet step 46,000, 128 tuning prompts x 2
    seeds) the deterministic solver drew a named pattern in 0.42 of images, the SDE form in 0.55 (0.61 at guidance
    3.5), category and shape words alike (docs/basemodel.md). Its noise comes from the call's generator."""
    return DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **noise_schedule(arch))


def assemble_pipeline(vae, unet, text_encoder, tokenizer, arch: ArchitectureConfig) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sampling_scheduler(arch),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


MAX_SHARD_BYTES = 16 * 2**20  # each weights file at most 16 MiB: the size a GPU machine hands back in one piece


def save_pipeline(
    pipeline: StableDiffusionPipeline,
    directory: Path,
    dtype: torch.dtype = torch.float16,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the pipeline folder (safetensors in `dtype`, each file at most `max_shard_bytes`, larger models in
    indexed shards); it loads with from_pretrained(dir, local_files_only=True)."""
    directory = Path(directory)
    pipeline = pipeline.to(dtype=dtype) if dtype is not None else pipeline
    pipeline.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_bytes)
    # transformers loads with dtype "auto" (the saved dtype) while diffusers loads in fp32: declaring fp32 in the
    # text encoder's config makes a plain from_pretrained(path) give one consistent fp32 pipeline on the CPU.
    config_path = directory / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pipeline_from_checkpoint(run_dir: Path, use_ema: bool = True) -> tuple[StableDiffusionPipeline, dict]:
    """The fp32 pipeline of a training checkpoint (EMA weights by default), and its provenance."""
    run_dir = Path(run_dir)
    state = torch.load(run_dir / "unet.ckpt", weights_only=False, map_location="cpu")
    arch = saved_architecture(state["arch"])
    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    unet, text_encoder = build_unet(arch), build_text_encoder(arch, tokenizer)
    if use_ema:
        unet.load_state_dict({**state["unet"], **state["ema_unet"]})  # buffers from the live model, weights from EMA
        text_encoder.load_state_dict({**state["text_encoder"], **state["ema_text"]})
    else:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    pipeline = assemble_pipeline(vae, unet.eval(), text_encoder.eval(), tokenizer, arch)
    info = {
        "unet_step": state["step"],
        "ema": use_ema,
        "vae": state["vae"],
        "arch": state["arch"],
        "config": state["config"],
    }
    return pipeline, info
