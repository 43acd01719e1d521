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
from .config import saved_architecture
from .train import DEFAULT_RUN_DIR

INFO_FILE = "basemodel.json"  # training provenance, next to model_index.json


def pipeline_from_checkpoint(run_dir: Path, use_ema: bool = True) -> tuple[StableDiffusionPipeline, dict]:
    """The fp32 pipeline of a training checkpoint (EMA weights by default), and its provenance."""
    run_dir = Path(run_dir)
    state = torch.load(run_dir / "unet.ckpt", weights_only=False, map_location="cpu")
    arch = saved_architecture(state["arch"])
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


MODEL_CARD = """# Embedded base model: a tiny Stable Diffusion of the micro world

Trained from scratch on `perfusion.world` scenes (held-out objects never shown) with
`python -m perfusion.world.basemodel.train`; written by `python -m perfusion.world.basemodel.export`.
Load with `StableDiffusionPipeline.from_pretrained(perfusion.world.default_model_path(), local_files_only=True)`.

- UNet2DConditionModel {unet:.2f}M parameters, blocks {blocks}, cross-attention width {width}, 16x16x4 latents
- CLIPTextModel {text:.2f}M parameters, CLIPTokenizer with {vocab} tokens (CLIP-format BPE)
- AutoencoderKL {vae:.2f}M parameters, 64x64 RGB <-> 16x16x4, scaling factor {scaling:.4f}
- {prediction} prediction, SD1.x beta schedule{rescaled}; sampler DPMSolverMultistepScheduler
- UNet training step {step} (batch {batch}), EMA weights, fp16 files

## Measured (judge; {prompts} prompts x {seeds} seeds, 25 steps, guidance {guidance})

{table}

![samples](samples.png)
"""


def write_model_card(out: Path, pipe, info: dict, table_text: str, config) -> None:
    arch = info["arch"]
    (out / "README.md").write_text(MODEL_CARD.format(
        unet=models.parameter_count(pipe.unet) / 1e6, blocks=tuple(arch["unet_block_out_channels"]),
        width=arch["text_hidden_size"], text=models.parameter_count(pipe.text_encoder) / 1e6, vocab=len(pipe.tokenizer),
        vae=models.parameter_count(pipe.vae) / 1e6, scaling=pipe.vae.config.scaling_factor,
        prediction=arch["prediction_type"],
        rescaled=" rescaled to zero terminal SNR, trailing timesteps" if arch.get("zero_terminal_snr") else "",
        step=info["unet_step"], batch=info["config"]["batch_size"],
        prompts=config.prompts, seeds=config.seeds, guidance=config.guidance_scale, table=table_text,
    ))  # fmt: skip


def evaluate_export(out: Path, info: dict) -> str:
    """Score the exported folder itself (as users load it), write its model card and a sample grid."""
    from .evaluate import EvaluationConfig, evaluate, sample_grid, seconds_for_eight, table

    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    config = EvaluationConfig()
    outcome = evaluate(pipe, config)
    text = table(outcome["results"], seconds_for_eight(pipe, config))
    rows = 16
    texts = [caption for _, caption in outcome["prompts"][:rows]]
    sample_grid(outcome["images"][: rows * config.seeds], texts, config.seeds).save(out / "samples.png")
    write_model_card(out, pipe, info, text, config)
    return text


def main(argv=None) -> None:
    from perfusion.world.model_path import MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--no-ema", action="store_true")
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--evaluate", action="store_true", help="score the export; write README.md and samples.png")
    arguments = parser.parse_args(argv)
    out = export(arguments.run_dir, arguments.out, torch.float32 if arguments.fp32 else torch.float16, not arguments.no_ema)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    if arguments.evaluate:
        torch.set_num_threads(2)
        print(evaluate_export(out, json.loads((out / INFO_FILE).read_text())))


if __name__ == "__main__":
    main()
