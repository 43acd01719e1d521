"""Where the embedded base model (a tiny Stable Diffusion trained on the micro world) lives inside the package."""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
# The families laboratory's base model while it trains (issue 30): its EMA weights, committed at the end of each
# training session so that a new checkout goes on from them (make basemodel: --init-from). It becomes the embedded
# default (MODEL_DIR) once its bars hold.
FAMILIES_MODEL_DIR = Path(__file__).resolve().parent / "families" / "model"


def default_model_path() -> Path:
    """The shipped pipeline folder; load it with StableDiffusionPipeline.from_pretrained(path, local_files_only=True)."""
    if not (MODEL_DIR / "model_index.json").exists():
        raise FileNotFoundError(
            f"the embedded base model is not in {MODEL_DIR}: train and export it "
            "(python -m perfusion.world.basemodel.export)"
        )
    return MODEL_DIR
