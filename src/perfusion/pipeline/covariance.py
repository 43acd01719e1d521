"""C = E[e e^T] over a caption corpus, estimated with the pipeline's own text encoders and cached per model.

e is what the UNet's cross-attention reads (perfusion.pipeline.conditioning): SD's last hidden state, SDXL's two penultimate
layers concatenated."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from perfusion.concept.fingerprint import text_encoder_fingerprint, text_encoder_tensors, weights_digest
from perfusion.files import atomic_save_safetensors
from perfusion.pipeline.conditioning import Readout, TextConditioning
from perfusion.pipeline.text import content_mask

# Keeps C invertible when a small corpus or a tiny encoder leaves a direction unseen; relative to mean(diag C).
RIDGE = 1e-6
DEFAULT_CAPTIONS = 10_000


def cache_root() -> Path:
    """$PERFUSION_CACHE, else $XDG_CACHE_HOME/perfusion, else ~/.cache/perfusion."""
    if os.environ.get("PERFUSION_CACHE"):
        return Path(os.environ["PERFUSION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perfusion"


@torch.no_grad()
def estimate_covariance(text: TextConditioning, captions: list[str], batch_size: int = 64, progress: bool = False):
    """The uncentered covariance of token encodings, padding excluded, accumulated in float64."""
    if not captions:
        raise ValueError("the caption corpus is empty")
    width = text.width
    covariance = torch.zeros(width, width, dtype=torch.float64, device=text.device)
    count = 0
    batches = range(0, len(captions), batch_size)
    for start in tqdm(batches, desc="covariance", disable=not progress, unit="batch"):
        # Pad to the batch's longest caption only: a causal encoder's content positions ignore the padding.
        ids = text.tokenize(captions[start : start + batch_size], padding="longest")
        if len({tower_ids.shape for tower_ids in ids}) > 1:
            raise ValueError("the text encoders' tokenizers split the captions differently")
        keep = content_mask(ids[0], text.tokenizer.eos_token_id).to(text.device)
        encodings = text.encode(ids).to(text.device)[keep].to(torch.float64)
        covariance += encodings.T @ encodings
        count += encodings.shape[0]
    covariance /= count
    covariance += RIDGE * covariance.diagonal().mean() * torch.eye(width, dtype=torch.float64, device=covariance.device)
    return covariance.cpu()


def corpus_digest(captions: list[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


def corpus_label(captions: list[str] | None) -> str:
    """Which corpus C comes from, as a concept file records it: "packaged:<digest>" or "captions:<digest>"."""
    if captions is None:
        from perfusion.pipeline.corpus import default_captions

        return f"packaged:{corpus_digest(default_captions(DEFAULT_CAPTIONS))}"
    return f"captions:{corpus_digest(captions)}"


def read_cached(path: Path, width: int) -> torch.Tensor | None:
    """The cached C^-1, or None when the entry is unreadable, of another width or not finite."""
    try:
        inverse = load_file(path)["inverse_covariance"]
    except (SafetensorError, KeyError, OSError, RuntimeError, ValueError):
        return None
    if inverse.shape != (width, width) or inverse.dtype != torch.float64 or not torch.isfinite(inverse).all():
        return None
    if torch.linalg.cholesky_ex(inverse).info != 0:  # not positive definite: the edit could not factor it
        return None
    return inverse


def conditioning_fingerprint(text: TextConditioning) -> str:
    """The cache's key for a pipeline's text side: its text encoders' weights and the hidden states read."""
    if len(text.towers) == 1 and text.towers[0].readout == Readout():  # SD 1.x and 2.x
        tower = text.towers[0]
        return text_encoder_fingerprint(tower.text_encoder, tower.tokenizer.vocab_size)
    return weights_digest(
        (f"{tower.name}.{name}@{tower.readout}", value)
        for tower in text.towers
        for name, value in text_encoder_tensors(tower.text_encoder, tower.tokenizer.vocab_size)
    )


def inverse_covariance(text: TextConditioning, captions: list[str] | None = None, progress: bool = False):
    """C^-1 in float64 (CPU), from the disk cache when these text encoders and corpus were seen before."""
    if captions is None:
        from perfusion.pipeline.corpus import default_captions

        captions = default_captions(DEFAULT_CAPTIONS)
    key = f"{conditioning_fingerprint(text)[:24]}-{corpus_digest(captions)}"
    path = cache_root() / "covariance" / f"{key}.safetensors"
    if path.exists():
        cached = read_cached(path, text.width)
        if cached is not None:
            return cached
        warnings.warn(f"{path}: a damaged covariance cache entry; recomputed and replaced", UserWarning, stacklevel=2)
    covariance = estimate_covariance(text, captions, progress=progress)
    inverse = torch.linalg.inv(covariance)
    atomic_save_safetensors(
        {"covariance": covariance, "inverse_covariance": inverse}, path, {"captions": str(len(captions))}
    )
    return inverse
