"""The families judge: reads 64x64 images of the families world and says what they show.

judge = Judge.load()
reading = judge.read(images)                    # PIL images or a (N, 3, H, W) tensor in [0, 1]
reading.label("category", 0), reading.accepted(0), reading.shape(0), reading.embeddings[0]
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

from .categories import CATEGORIES
from .judge_net import HEAD_CLASSES, PATTERN_SCALE, SHAPE_SLICES, JudgeNet, JudgeNetConfig

JUDGE_PATH = Path(__file__).resolve().parents[1] / "assets" / "families_judge.safetensors"


@dataclass
class Reading:
    """What the judge reads in a batch: probabilities per head, regressed parameters, identity embeddings."""

    probabilities: dict[str, torch.Tensor]  # head -> (N, classes)
    regression: torch.Tensor  # (N, REGRESSION_OUTPUTS) in [0, 1]
    embeddings: torch.Tensor  # (N, embedding_dim), L2-normalised

    def __len__(self) -> int:
        return len(self.embeddings)

    def label(self, head: str, row: int):
        return HEAD_CLASSES[head][int(self.probabilities[head][row].argmax())]

    def accepted(self, row: int) -> bool:
        return bool(self.label("accept", row))

    def shape(self, row: int, category: str | None = None) -> dict[str, float]:
        """The shape values read, for the given category (the category read by default)."""
        name = category or self.label("category", row)
        values = self.regression[row, SHAPE_SLICES[name]].tolist()
        return dict(zip(CATEGORIES[name].shape_names, values))

    def pattern_scale(self, row: int) -> float:
        return float(self.regression[row, PATTERN_SCALE])


def images_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        batch = images.float()
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W) in [0, 1], got {tuple(batch.shape)}")
        return batch
    if not isinstance(images, Sequence) or not images:
        raise ValueError("expected a non-empty list of PIL images or a (N, 3, H, W) tensor")
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class Judge:
    def __init__(self, net: JudgeNet, metadata: dict | None = None):
        self.net = net.eval()
        self.metadata = metadata or {}

    @classmethod
    def load(cls, path: str | Path = JUDGE_PATH) -> Judge:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no judge weights; train them with python -m perfusion.world.families.train_judge"
            )
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if "config" not in header or "classes" not in header:
            raise ValueError(f"{path}: not a judge file (no config/classes metadata)")
        if json.loads(header["classes"]) != judge_classes():
            raise ValueError(
                f"{path}: trained for another world; retrain with python -m perfusion.world.families.train_judge"
            )
        net = JudgeNet(JudgeNetConfig.from_dict(json.loads(header["config"])))
        net.load_state_dict({name: tensor.float() for name, tensor in load_file(str(path)).items()})
        return cls(net, json.loads(header.get("extra", "{}")))

    @torch.no_grad()
    def read(self, images, batch_size: int = 256) -> Reading:
        batch = images_tensor(images)
        side = self.net.config.image_side
        if batch.shape[-2:] != (side, side):
            batch = F.interpolate(batch, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        batch = batch.clamp(0.0, 1.0)
        outputs = [self.net(batch[start : start + batch_size]) for start in range(0, len(batch), batch_size)]
        return Reading(
            probabilities={name: torch.cat([o[0][name] for o in outputs]).softmax(-1) for name in HEAD_CLASSES},
            regression=torch.cat([o[1] for o in outputs]),
            embeddings=torch.cat([o[2] for o in outputs]),
        )


def judge_classes() -> dict:
    """Every head's class names, as stored with the weights."""
    return {name: [str(value) for value in classes] for name, classes in HEAD_CLASSES.items()}


def save_judge(net: JudgeNet, path: Path, extra: dict) -> None:
    """fp16 weights with the network config, the class lists and ``extra`` as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "config": json.dumps(net.config.to_dict()),
        "classes": json.dumps(judge_classes()),
        "extra": json.dumps(extra),
    }
    tensors = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in net.state_dict().items()
    }
    atomic_save_safetensors(tensors, path, metadata)
