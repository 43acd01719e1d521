"""Write the trained base model as a diffusers pipeline folder (EMA weights, fp16 safetensors):

python -m perfusion.world.basemodel.export [--run-dir checkpoints/basemodel] [--out src/perfusion/world/model] --world emoji|families
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from perfusion.pipeline.corpus import MODEL_CAPTIONS
from perfusion.recipes import RECIPE_FILE

from . import model as models
from .config import DEFAULT_RUN_DIR
from .data import world_captions
from .evaluate import EvaluationConfig, evaluate, sample_grid, seconds_for_eight, table
from .model import pipeline_from_checkpoint

INFO_FILE = "basemodel.json"  # training provenance, next to model_index.json


def export(
    run_dir: Path, out: Path, dtype: torch.dtype = torch.float16, use_ema: bool = True, world: str = "families"
) -> Path:
    """A pipeline folder of the checkpoint, with its provenance and its world's captions (the corpus for C). A
    Perfusion recipe already in ``out`` is kept: it is tuned apart from the weights (issue 31)."""
    pipeline, info = pipeline_from_checkpoint(run_dir, use_ema)
    out = Path(out)
    recipe = out / RECIPE_FILE
    kept = recipe.read_bytes() if recipe.is_file() else None
    if out.exists():
        shutil.rmtree(out)
    models.save_pipeline(pipeline, out, dtype)
    (out / INFO_FILE).write_text(json.dumps({"world": world, **info}, indent=1))
    write_model_captions(out, world)
    if kept is not None:
        recipe.write_bytes(kept)
    return out


def model_world(model: str | Path) -> str:
    """The world a pipeline folder learned ("families" or "emoji", from its basemodel.json); "emoji" for the
    folders exported before the file said (and for folders without one, which the micro-world tools assume)."""
    path = Path(model) / INFO_FILE
    if not path.is_file():
        return "emoji"
    try:
        return json.loads(path.read_text()).get("world", "emoji")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: unreadable ({error}); fix or delete it") from None


def write_model_captions(out: Path, world: str) -> None:
    """The folder's own corpus for C: its world's captions, at its own prompt length."""
    (Path(out) / MODEL_CAPTIONS).write_text("\n".join(world_captions(world)) + "\n", encoding="utf-8")


MODEL_CARD = """# Embedded base model: a tiny Stable Diffusion of the micro world

Trained from scratch on `perfusion.world` scenes (held-out objects never shown) with
`python -m perfusion.world.basemodel.train_base`; written by `python -m perfusion.world.basemodel.export`.
Load with `StableDiffusionPipeline.from_pretrained(perfusion.world.default_model_path(), local_files_only=True)`.

- UNet2DConditionModel {unet:.2f}M parameters, blocks {blocks}, cross-attention width {width}, 16x16x4 latents
- CLIPTextModel {text:.2f}M parameters, CLIPTokenizer with {vocab} tokens (CLIP-format BPE)
- AutoencoderKL {vae:.2f}M parameters, 64x64 RGB <-> 16x16x4, scaling factor {scaling:.4f}
- {prediction} prediction, SD1.x beta schedule{rescaled}; sampler DPMSolverMultistepScheduler (SDE-DPM-Solver++)
- UNet training step {step} (batch {batch}), EMA weights, fp16 files

## Measured (judge; {prompts} prompts x {seeds} seeds, 25 steps, guidance {guidance})

{table}

![samples](samples.png)
"""


def write_model_card(out: Path, pipe, info: dict, table_text: str, config) -> None:
    arch = info["arch"]
    (out / "README.md").write_text(
        MODEL_CARD.format(
            unet=models.parameter_count(pipe.unet) / 1e6,
            blocks=tuple(arch["unet_block_out_channels"]),
            width=arch["text_hidden_size"],
            text=models.parameter_count(pipe.text_encoder) / 1e6,
            vocab=len(pipe.tokenizer),
            vae=models.parameter_count(pipe.vae) / 1e6,
            scaling=pipe.vae.config.scaling_factor,
            prediction=arch["prediction_type"],
            rescaled=" rescaled to zero terminal SNR, trailing timesteps" if arch.get("zero_terminal_snr") else "",
            step=info["unet_step"],
            batch=info["config"]["batch_size"],
            prompts=config.prompts,
            seeds=config.seeds,
            guidance=config.guidance_scale,
            table=table_text,
        )
    )


def evaluate_export(out: Path, info: dict) -> str:
    """Score the exported folder itself (as users load it), write its model card and a sample grid."""
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
    parser.add_argument(
        "--world", choices=["families", "emoji"], required=True, help="the world it learned: its captions go with it"
    )
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--evaluate", action="store_true", help="score the export; write README.md and samples.png")
    arguments = parser.parse_args(argv)
    out = export(
        arguments.run_dir,
        arguments.out,
        torch.float32 if arguments.fp32 else torch.float16,
        not arguments.no_ema,
        arguments.world,
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    if arguments.evaluate:
        torch.set_num_threads(2)
        print(evaluate_export(out, json.loads((out / INFO_FILE).read_text())))


if __name__ == "__main__":
    main()
