"""The families judge's network: a small CNN with a spatial branch (background, position, size, how many objects,
which category is left and right) and a translation-invariant identity branch (accept or refuse, category,
attributes, pose, and an identity embedding trained to tell instances apart across scenes).

Class orders come from the world's own lists, so a label index means the same thing in training, in the weights
file and in predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .categories import CATEGORIES, CATEGORY_NAMES, PATTERNS
from .palette import BACKGROUNDS, COLOURS
from .scenes import FACINGS, POSITIONS, SIZES

NOTHING = "nothing"  # a pair's side that holds no recognisable object
COLOUR_NAMES = tuple(COLOURS)
HEAD_CLASSES: dict[str, tuple] = {
    # identity branch (one-object images)
    "accept": (False, True),  # is there an object a person would name, or only its colours?
    "category": CATEGORY_NAMES,
    "colour": COLOUR_NAMES,
    "second_colour": COLOUR_NAMES,  # the pattern's colour, for patterned instances
    "pattern": PATTERNS,
    "accessory": (False, True),  # categories that have one
    "accessory_colour": COLOUR_NAMES,
    "pose": ("standing", "sitting"),  # categories that sit
    "facing": FACINGS,
    # spatial branch
    "background": tuple(BACKGROUNDS),
    "position": POSITIONS,  # one-object images
    "size": SIZES,
    "count": (1, 2),
    "left": CATEGORY_NAMES + (NOTHING,),  # two-object images
    "right": CATEGORY_NAMES + (NOTHING,),
}
SPATIAL_HEADS = ("background", "position", "size", "count", "left", "right")
# Regressed parameters: every category's shape values side by side, then the pattern's scale.
SHAPE_SLICES: dict[str, slice] = {}
_start = 0
for _name in CATEGORY_NAMES:
    SHAPE_SLICES[_name] = slice(_start, _start + len(CATEGORIES[_name].shapes))
    _start += len(CATEGORIES[_name].shapes)
SHAPE_OUTPUTS = _start
PATTERN_SCALE = SHAPE_OUTPUTS  # index of the pattern-scale output
REGRESSION_OUTPUTS = SHAPE_OUTPUTS + 1


@dataclass(frozen=True)
class JudgeNetConfig:
    widths: tuple[int, ...] = (32, 48, 96, 160)  # stem width, then one width per two-conv stage (each halves the grid)
    spatial_grid: int = 4
    spatial_features: int = 192
    identity_features: int = 256
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
    """Images (N, 3, 64, 64) in [0, 1] -> logits per head, regressed parameters (N, REGRESSION_OUTPUTS) and an
    L2-normalised identity embedding."""

    def __init__(self, config: JudgeNetConfig = JudgeNetConfig()):
        super().__init__()
        self.config = config
        stem, *stages = config.widths
        layers, width = [conv_block(3, stem)], stem
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
        # Mean and max pooling: a small object's parts (an eye, a spot) are a few cells of the last grid.
        self.identity = nn.Sequential(nn.Linear(2 * width, config.identity_features), nn.ReLU(inplace=True))
        self.embedding = nn.Linear(config.identity_features, config.embedding_dim)
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(
                    config.spatial_features if name in SPATIAL_HEADS else config.identity_features, len(classes)
                )
                for name, classes in HEAD_CLASSES.items()
            }
        )
        self.regression = nn.Linear(config.identity_features, REGRESSION_OUTPUTS)

    def forward(self, images: torch.Tensor):
        features = self.trunk(images * 2.0 - 1.0)
        spatial = self.spatial(features)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        identity = self.identity(pooled)
        logits = {name: head(spatial if name in SPATIAL_HEADS else identity) for name, head in self.heads.items()}
        return (
            logits,
            torch.sigmoid(self.regression(identity)),
            nn.functional.normalize(self.embedding(identity), dim=-1),
        )
