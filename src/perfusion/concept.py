"""The concept file: what one trained concept is, and its safetensors format.

A file holds v* (the token's input embedding), i* (its encoding), i*_super (the supercategory's
encoding, from which the key targets o*_K = W_K i*_super are recomputed exactly at load time) and one
value target o*_V per cross-attention layer, plus metadata. Nothing per token position, no C^-1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from perfusion.files import atomic_save_safetensors

FORMAT = "perfusion-concept"
FORMAT_VERSION = 1
DEFAULT_BETA = 0.7
DEFAULT_TAU = 0.15
VALUE_PREFIX = "value_targets."


class ConceptFileError(ValueError):
    """A concept file that is missing, corrupt, of another format, or made for another base model."""


@dataclass
class Concept:
    token: str
    supercategory: str
    token_embedding: torch.Tensor  # v*
    concept_encoding: torch.Tensor  # i*
    supercategory_encoding: torch.Tensor  # i*_super, the key lock
    value_targets: dict[str, torch.Tensor]  # o*_V by cross-attention layer name
    base_fingerprint: str
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    training: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {
            "token_embedding": self.token_embedding,
            "concept_encoding": self.concept_encoding,
            "supercategory_encoding": self.supercategory_encoding,
        }
        named.update({VALUE_PREFIX + layer: target for layer, target in self.value_targets.items()})
        return named

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "token": self.token,
            "supercategory": self.supercategory,
            "beta": repr(self.beta),
            "tau": repr(self.tau),
            "base_fingerprint": self.base_fingerprint,
            "training": json.dumps(self.training, sort_keys=True),
        }

    def save(self, path: str | Path, half: bool = False) -> Path:
        """Write atomically; ``half`` stores fp16 (the file halves, the values round)."""
        dtype = torch.float16 if half else torch.float32
        tensors = {name: tensor.detach().to(dtype) for name, tensor in self.tensors().items()}
        return atomic_save_safetensors(tensors, path, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> "Concept":
        path = Path(path)
        if not path.is_file():
            raise ConceptFileError(f"{path}: no such concept file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name).to(torch.float32) for name in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise ConceptFileError(f"{path}: not a readable safetensors file ({error})") from None
        if metadata.get("format") != FORMAT:
            raise ConceptFileError(f"{path}: not a perfusion concept file")
        version = metadata.get("format_version", "0")
        if not version.isdigit():
            raise ConceptFileError(f"{path}: unreadable format version {version!r}")
        if int(version) > FORMAT_VERSION:
            raise ConceptFileError(f"{path}: format version {version} is newer than this perfusion reads ({FORMAT_VERSION})")
        try:
            return cls(
                token=metadata["token"],
                supercategory=metadata["supercategory"],
                token_embedding=tensors["token_embedding"],
                concept_encoding=tensors["concept_encoding"],
                supercategory_encoding=tensors["supercategory_encoding"],
                value_targets={
                    name[len(VALUE_PREFIX) :]: tensor for name, tensor in tensors.items() if name.startswith(VALUE_PREFIX)
                },
                base_fingerprint=metadata["base_fingerprint"],
                beta=float(metadata["beta"]),
                tau=float(metadata["tau"]),
                training=json.loads(metadata.get("training", "{}")),
            )
        except (KeyError, ValueError) as error:
            raise ConceptFileError(f"{path}: incomplete concept file ({error})") from None
