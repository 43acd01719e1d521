"""What a baseline ships: one safetensors file, and the handle a pipeline gets when that file is applied."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from perfusion.baselines.training import BaselineError, BaselineResult
from perfusion.files import atomic_save_safetensors
from perfusion.pipeline.fingerprint import trained_on

FORMAT = "perfusion-baseline"


def save(result: BaselineResult, path: str | Path, half: bool = False) -> Path:
    """Write the artifact (fp32, or fp16 with ``half``); sets ``result.path`` and ``result.size_bytes``."""
    dtype = torch.float16 if half else torch.float32
    tensors = {name: tensor.to(dtype) for name, tensor in result.tensors.items()}
    path = atomic_save_safetensors(tensors, path, {"format": "pt", "artifact": FORMAT, **result.metadata})
    result.path, result.size_bytes = path, path.stat().st_size
    return path


def at_step(result: BaselineResult, step: int) -> BaselineResult:
    """The result as it stood after ``step`` optimizer steps (one of its config's snapshot_steps), to ``save``."""
    if step not in result.snapshots:
        raise BaselineError(f"no snapshot at step {step} (kept: {sorted(result.snapshots) or 'none'})")
    return snapshot_result(result, step, result.snapshots[step])


def snapshot_result(result: BaselineResult, step: int, tensors: dict[str, torch.Tensor]) -> BaselineResult:
    """``result`` with the tensors it had after ``step`` optimizer steps (its metadata says so)."""
    metadata = {**result.metadata, "steps_trained": str(step)}
    return replace(
        result, tensors=tensors, steps=step, losses=result.losses[:step], snapshots={}, path=None, metadata=metadata
    )


def read(path: str | Path, method: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (fp32) and metadata of a saved artifact of ``method``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name).float() for name in handle.keys()}
    except (OSError, ValueError) as error:  # safetensors reports a foreign file as either
        raise BaselineError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("artifact") != FORMAT or metadata.get("method") != method:
        raise BaselineError(f"{path}: not a {method} artifact (it says {metadata.get('method')!r})")
    return tensors, metadata


def check_base(pipe, metadata: dict[str, str], path) -> None:
    if not trained_on(pipe, metadata["base_fingerprint"]):
        raise BaselineError(f"{path}: trained on another base model")


@dataclass
class Personalised:
    """A baseline applied to a pipeline: how its prompts name the concept, and its strength knob if it has one."""

    method: str
    token: str  # what the benchmark's prompts say ("<mycat>")
    phrase: str  # what the method was trained to read ("<mycat>", "<mycat> cat", "sks cat")
    set_strength: Callable[[float], None] | None = None  # LoRA scale, Custom Diffusion's weight interpolation

    def prompt(self, text: str) -> str:
        return text.replace(self.token, self.phrase)


def personalised(metadata: dict[str, str], set_strength=None) -> Personalised:
    return Personalised(metadata["method"], metadata["token"], metadata["phrase"], set_strength)
