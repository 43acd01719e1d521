"""Write the trained base model as a diffusers pipeline folder (EMA weights, fp16 safetensors):

    python -m perfusion.world.basemodel.export [--run-dir checkpoints/basemodel] [--out src/perfusion/world/model]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from transformers import CLIPTokenizer

from . import model as models
from .config import ArchitectureConfig, from_dict
from .train import DEFAULT_RUN_DIR

INFO_FILE = "basemodel.json"  # training provenance, next to model_index.json


def pipeline_from_checkpoint(run_dir: Path, use_ema: bool = True) -> tuple[StableDiffusionPipeline, dict]:
    """The fp32 pipeline of a training checkpoint (EMA weights by default), and its provenance."""
    run_dir = Path(run_dir)
    state = torch.load(run_dir / "unet.ckpt", weights_only=False, map_location="cpu")
    arch = from_dict(ArchitectureConfig, state["arch"])
    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    unet, text_encoder = models.build_unet(arch), models.build_text_encoder(arch, tokenizer)
    if use_ema:
        unet.load_state_dict({**state["unet"], **state["ema_unet"]})  # buffers from the live model, weights from EMA
        text_encoder.load_state_dict({**state["text_encoder"], **state["ema_text"]})
    else:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    pipeline = models.assemble_pipeline(vae, unet.eval(), text_encoder.eval(), tokenizer, arch)
    info = {"unet_step": state["step"], "ema": use_ema, "vae": state["vae"], "arch": state["arch"], "config": state["config"]}
    return pipeline, info


def export(run_dir: Path, out: Path, dtype: torch.dtype = torch.float16, use_ema: bool = True) -> Path:
    pipeline, info = pipeline_from_checkpoint(run_dir, use_ema)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    models.save_pipeline(pipeline, out, dtype)
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    return out


def main(argv=None) -> None:
    from perfusion.world.model_path import MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--no-ema", action="store_true")
    parser.add_argument("--fp32", action="store_true")
    arguments = parser.parse_args(argv)
    out = export(arguments.run_dir, arguments.out, torch.float32 if arguments.fp32 else torch.float16, not arguments.no_ema)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
