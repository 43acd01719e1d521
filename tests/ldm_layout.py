"""A diffusers pipeline written as one checkpoint in the original (LDM / CompVis) key layout, as model-sharing sites
publish them, so that the single-file tests run offline on tiny pipelines.

This is diffusers' single-file conversion run backwards (diffusers.loaders.single_file_utils maps original keys to
diffusers'); tests/test_single_file.py checks that diffusers' own converters give every tensor back.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
UNET_RESNET |= {"time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def rename_part(rest: str, table: dict[str, str]) -> str:
    """``rest`` ("conv1.weight") with its leading module named by ``table``."""
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key(key: str, config) -> str:
    """One diffusers UNet key in the original layout (input_blocks, middle_block, output_blocks)."""
    top = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    if key in top:
        return top[key]
    per_block = config.layers_per_block + 1  # the resnets, and the down- or upsampler's slot
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{rename_part(rest, UNET_RESNET)}"
    block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{per_block * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
        slot = per_block * block + index + 1
        if kind == "attentions":
            return f"input_blocks.{slot}.1.{rest}"
        return f"input_blocks.{slot}.0.{rename_part(rest, UNET_RESNET)}"
    if kind == "upsamplers":  # after the last resnet (and its attention, where the block has them)
        has_attention = "CrossAttn" in config.up_block_types[block]
        return f"output_blocks.{per_block * block + per_block - 1}.{2 if has_attention else 1}.{rest}"
    slot = per_block * block + index
    if kind == "attentions":
        return f"output_blocks.{slot}.1.{rest}"
    return f"output_blocks.{slot}.0.{rename_part(rest, UNET_RESNET)}"


def vae_key(key: str, config) -> str:
    """One diffusers VAE key in the original layout (encoder.down, decoder.up counted from the top, mid.block_1)."""
    top = {new: old for new, old in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    if key in top:
        return top[key]
    coder, parts = key.split(".", 1)[0], key.split(".")[1:]
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"{coder}.mid.attn_1.{rename_part(rest, VAE_ATTENTION)}"
        return f"{coder}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if coder == "decoder":
        block = len(config.up_block_types) - 1 - block
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{'down' if coder == 'encoder' else 'up'}.{block}.{kind[:-2]}.{rest}"
    place = "down" if coder == "encoder" else "up"
    return f"{coder}.{place}.{block}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"


def clip_state(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder as original checkpoints keep it: its own keys under ``text_model.``."""
    return {
        prefix + (key if key.startswith(("text_model.", "text_projection")) else "text_model." + key): tensor
        for key, tensor in text_encoder.state_dict().items()
        if not key.endswith("position_ids")
    }


def open_clip_state(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder in OpenCLIP's layout (SD 2.x, SDXL's second): resblocks, fused q/k/v, the
    projection transposed."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    top = {new.removeprefix("text_model."): old for new, old in DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"].items()}
    out = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[prefix + top[key]] = tensor.T.contiguous() if key == "text_projection.weight" else tensor
            continue
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue  # fused with q below
        name = key.replace("encoder.layers.", "transformer.resblocks.")
        for new, old in OPEN_CLIP.items():
            name = name.replace(new, old)
        if ".self_attn.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            fused = torch.cat([state[key.replace("q_proj", part)] for part in ("q_proj", "k_proj", "v_proj")])
            out[prefix + name.split(".self_attn.")[0] + f".attn.in_proj_{kind}"] = fused
            continue
        out[prefix + name.replace(".self_attn.", ".attn.")] = tensor
    return out


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoders in one original-layout state dict (SD 1.x, 2.x or SDXL base)."""
    state = {
        "model.diffusion_model." + unet_key(key, pipe.unet.config): tensor
        for key, tensor in pipe.unet.state_dict().items()
    }
    for key, tensor in pipe.vae.state_dict().items():
        name = vae_key(key, pipe.vae.config)
        attention = ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2
        state["first_stage_model." + name] = tensor[:, :, None, None] if attention else tensor  # 1x1 convolutions
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL base: CLIP ViT-L as is, then OpenCLIP bigG
        state |= clip_state(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= open_clip_state(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    elif pipe.text_encoder.config.hidden_act == "gelu":  # SD 2.x's OpenCLIP ViT-H
        state |= open_clip_state(pipe.text_encoder, "cond_stage_model.model.")
    else:
        state |= clip_state(pipe.text_encoder, "cond_stage_model.transformer.")
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}
