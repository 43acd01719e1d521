"""The judge's network: a small CNN with a spatial branch (background, position, size, how many objects, which
object is left / right) and a translation-invariant identity branch (object, objects present, identity embedding).

Class orders come from the catalog, so a label index means the same thing in training, in the weights file and in
predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .catalog import BACKGROUNDS, OBJECTS, POSITIONS, SIZES

OBJECT_NAMES: tuple[str, ...] = tuple(OBJECTS)
# The object heads' last class: something is there, but no object a person would name (an object's colours without
# its shape: perfusion.world.negatives). A verdict of NOTHING is a refusal.
NOTHING = "no recognisable object"
OBJECT_CLASSES: tuple[str, ...] = OBJECT_NAMES + (NOTHING,)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
COUNTS: tuple[int, ...] = (1, 2)
HEAD_CLASSES: dict[str, tuple] = {
    "object": OBJECT_CLASSES,  # one-object scenes
    "background": BACKGROUND_NAMES,
    "position": POSITIONS,  # one-object scenes
    "size": SIZES,
    "count": COUNTS,  # things drawn, objects or not
    "left_object": OBJECT_CLASSES,  # two-object scenes
    "right_object": OBJECT_CLASSES,  # two-object scenes
}
IDENTITY_HEADS = ("object",)  # read the identity embedding; the others read the spatial features


@dataclass(frozen=True)
class JudgeNetConfig:
    widths: tuple[int, ...] = (24, 40, 80, 144)  # stem width, then one width per two-conv stage (each halves the grid)
    spatial_grid: int = 4  # the spatial branch sees the last feature map average-pooled to 4x4
    spatial_features: int = 192
    embedding_dim: int = 128
    image_side: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> JudgeNetConfig:
        return cls(**{**values, "widths": tuple(values["widths"])})


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class JudgeNet(nn.Module):
    """Images (N, 3, 64, 64) in [0, 1] -> logits per head and an L2-normalised identity embedding."""

    def __init__(self, config: JudgeNetConfig = JudgeNetConfig()):
        super().__init__()
        self.config = config
        stem, *stages = config.widths
        layers = [conv_block(3, stem)]
        width = stem
        for stage_width in stages:
            layers += [nn.MaxPool2d(2), conv_block(width, stage_width), conv_block(stage_width, stage_width)]
            width = stage_width
        self.trunk = nn.Sequential(*layers)
        self.spatial = nn.Sequential(
            nn.AdaptiveAvgPool2d(config.spatial_grid),
            nn.Flatten(),
            nn.Linear(width * config.spatial_grid**2, config.spatial_features),
            nn.ReLU(inplace=True),
        )
        self.identity = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, config.embedding_dim))
        # Multi-label "which objects are in the image": an auxiliary training target that makes the identity embedding
        # see both objects of a pair. Too weak to read (about 81% exact sets); predictions use the left/right heads.
        self.present = nn.Linear(config.embedding_dim, len(OBJECT_NAMES))
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(
                    config.embedding_dim if name in IDENTITY_HEADS else config.spatial_features, len(classes)
                )
                for name, classes in HEAD_CLASSES.items()
            }
        )

    def forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        features = self.trunk(images * 2.0 - 1.0)
        spatial, identity = self.spatial(features), self.identity(features)
        logits = {name: head(identity if name in IDENTITY_HEADS else spatial) for name, head in self.heads.items()}
        logits["present"] = self.present(identity)
        return logits, nn.functional.normalize(identity, dim=-1)
