"""The judge: reads 64x64 images of the micro world and says what they show.

judge = Judge.load()
for verdict in judge.predict(images):          # PIL images, or a float tensor (N, 3, H, W) in [0, 1]
    verdict.object, verdict.background, verdict.position, verdict.size, verdict.embedding
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from perfusion.files import atomic_save_safetensors

from .judge_data import images_tensor
from .judge_model import HEAD_CLASSES, NOTHING, JudgeNet, JudgeNetConfig

JUDGE_PATH = Path(__file__).resolve().parent / "assets" / "judge.safetensors"


@dataclass(frozen=True)
class Verdict:
    """What the judge reads in one image. Fields that only apply to one- or two-object images are None otherwise."""

    count: int  # 1 or 2 objects
    object: str | None  # the object of a one-object image (NOTHING: no recognisable object)
    object_confidence: float | None
    position: str | None  # of a one-object image
    left_object: str | None  # of a two-object image
    right_object: str | None
    present: tuple[str, ...]  # the recognised objects: the object, or the left and right objects, without NOTHING
    background: str
    size: str
    embedding: np.ndarray  # (embedding_dim,) L2-normalised identity features


@dataclass
class JudgeOutput:
    """Batched raw output: probabilities per head and embeddings, for metrics that need numbers, not names."""

    probabilities: dict[str, torch.Tensor]  # head -> (N, classes), softmax probabilities
    embeddings: torch.Tensor  # (N, embedding_dim), L2-normalised

    def label(self, head: str, row: int):
        return HEAD_CLASSES[head][int(self.probabilities[head][row].argmax())]


class Judge:
    def __init__(self, net: JudgeNet, metadata: dict | None = None):
        self.net = net.eval()
        self.metadata = metadata or {}

    @classmethod
    def load(cls, path: str | Path = JUDGE_PATH) -> Judge:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no judge weights; train them with python -m perfusion.world.train_judge")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if "config" not in header or "classes" not in header:
            raise ValueError(f"{path}: not a judge file (no config/classes metadata)")
        if json.loads(header["classes"]) != {name: list(classes) for name, classes in HEAD_CLASSES.items()}:
            raise ValueError(f"{path}: trained for another catalog; retrain with python -m perfusion.world.train_judge")
        net = JudgeNet(JudgeNetConfig.from_dict(json.loads(header["config"])))
        net.load_state_dict({name: tensor.float() for name, tensor in load_file(str(path)).items()})
        return cls(net, json.loads(header.get("extra", "{}")))

    def _tensor(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            batch = images.float()
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(f"expected images of shape (N, 3, H, W) in [0, 1], got {tuple(batch.shape)}")
        else:
            if not isinstance(images, Sequence) or not images:
                raise ValueError("expected a non-empty list of PIL images or a (N, 3, H, W) tensor")
            batch = images_tensor(images)
        side = self.net.config.image_side
        if batch.shape[-2:] != (side, side):
            batch = F.interpolate(batch, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return batch.clamp(0.0, 1.0)

    @torch.no_grad()
    def run(self, images, batch_size: int = 256) -> JudgeOutput:
        batch = self._tensor(images)
        outputs = [self.net(batch[start : start + batch_size]) for start in range(0, len(batch), batch_size)]
        probabilities = {name: torch.cat([logits[name] for logits, _ in outputs]).softmax(-1) for name in HEAD_CLASSES}
        return JudgeOutput(probabilities, torch.cat([embedding for _, embedding in outputs]))

    def predict(self, images) -> list[Verdict]:
        output = self.run(images)
        verdicts = []
        for row in range(len(output.embeddings)):
            single = output.label("count", row) == 1
            left, right = output.label("left_object", row), output.label("right_object", row)
            verdicts.append(
                Verdict(
                    count=output.label("count", row),
                    object=output.label("object", row) if single else None,
                    object_confidence=float(output.probabilities["object"][row].max()) if single else None,
                    position=output.label("position", row) if single else None,
                    left_object=None if single else left,
                    right_object=None if single else right,
                    present=tuple(
                        name
                        for name in ((output.label("object", row),) if single else (left, right))
                        if name != NOTHING
                    ),
                    background=output.label("background", row),
                    size=output.label("size", row),
                    embedding=output.embeddings[row].numpy(),
                )
            )
        return verdicts


def save_judge(net: JudgeNet, path: Path, extra: dict) -> None:
    """fp16 weights with the network config, the class lists and ``extra`` (accuracy, training settings) as metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "config": json.dumps(net.config.to_dict()),
        "classes": json.dumps({name: list(classes) for name, classes in HEAD_CLASSES.items()}),
        "extra": json.dumps(extra),
    }
    tensors = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in net.state_dict().items()
    }
    atomic_save_safetensors(tensors, path, metadata)
