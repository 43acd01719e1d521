"""Scenes of the micro world: a spec (what is where), its 64x64 rendering, and captions; all determined by a seed.

scene = make_scene(seed)          # Scene(image: PIL 64x64 RGB, caption: str, spec: SceneSpec)
spec = sample_spec(random.Random(seed)); image = render(spec); text = caption(spec, random.Random(1))
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from .captions import caption, describe
from .catalog import BACKGROUNDS, HELD_OUT, OBJECTS, POSITIONS, SEEN, SIZES, TWO_OBJECT_POSITIONS
from .render import render_layers

__all__ = [
    "Scene",
    "SceneSpec",
    "SamplingConfig",
    "sample_spec",
    "render",
    "render_with_mask",
    "caption",
    "describe",
    "make_scene",
]

TEXTURES = ("plain", "gradient", "noise")


@dataclass(frozen=True)
class SceneSpec:
    """Everything that decides a scene's pixels. Attributes (object, background, position, size, second_object) are
    what captions state; the rest is jitter that captions never mention. With a second object, ``position`` is the
    first object's side ("left" or "right") and the second object takes the other side."""

    object: str
    background: str
    position: str
    size: str
    second_object: str | None = None
    dx: float = 0.0  # shift of the object's centre, output pixels
    dy: float = 0.0
    rotation: float = 0.0  # degrees, counter-clockwise
    flip: bool = False  # glyph mirrored left-right
    scale: float = 1.0  # multiplies the size's nominal side length
    second_dx: float = 0.0
    second_dy: float = 0.0
    second_rotation: float = 0.0
    second_flip: bool = False
    texture: str = "plain"  # plain, gradient or noise
    texture_angle: float = 0.0  # gradient direction, degrees
    texture_seed: int = 0  # noise seed

    def __post_init__(self):
        checks = (
            ("object", self.object, OBJECTS),
            ("background", self.background, BACKGROUNDS),
            ("size", self.size, SIZES),
            ("texture", self.texture, TEXTURES),
        )
        for field_name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"SceneSpec.{field_name}={value!r}; expected one of: {', '.join(allowed)}")
        allowed_positions = POSITIONS if self.second_object is None else TWO_OBJECT_POSITIONS
        if self.position not in allowed_positions:
            raise ValueError(f"SceneSpec.position={self.position!r}; expected one of: {', '.join(allowed_positions)}")
        if self.second_object is not None and self.second_object not in OBJECTS:
            raise ValueError(f"SceneSpec.second_object={self.second_object!r} is not an object of the catalog")
        if self.second_object == self.object:
            raise ValueError("SceneSpec.second_object must differ from object")

    @property
    def objects(self) -> tuple[str, ...]:
        return (self.object,) if self.second_object is None else (self.object, self.second_object)


@dataclass(frozen=True)
class SamplingConfig:
    """How scene attributes and jitter are drawn."""

    second_object: float = 0.25  # chance of a two-object scene
    shift: float = 2.0  # max |dx|, |dy|, output pixels
    rotation: float = 12.0  # max |rotation|, degrees
    scale: tuple[float, float] = (0.92, 1.08)
    flip: float = 0.5


@dataclass(frozen=True)
class Scene:
    image: Image.Image  # 64x64 RGB
    caption: str
    spec: SceneSpec


def sample_spec(
    rng: random.Random, include_held_out: bool = False, config: SamplingConfig = SamplingConfig()
) -> SceneSpec:
    """A random scene spec. Held-out objects appear only when ``include_held_out`` (never for the base model)."""
    names = SEEN + HELD_OUT if include_held_out else SEEN
    first = rng.choice(names)
    second = rng.choice([name for name in names if name != first]) if rng.random() < config.second_object else None
    position = rng.choice(POSITIONS if second is None else TWO_OBJECT_POSITIONS)
    return SceneSpec(
        object=first,
        background=rng.choice(tuple(BACKGROUNDS)),
        position=position,
        size=rng.choice(SIZES),
        second_object=second,
        dx=rng.uniform(-config.shift, config.shift),
        dy=rng.uniform(-config.shift, config.shift),
        rotation=rng.uniform(-config.rotation, config.rotation),
        flip=rng.random() < config.flip,
        scale=rng.uniform(*config.scale),
        second_dx=rng.uniform(-config.shift, config.shift),
        second_dy=rng.uniform(-config.shift, config.shift),
        second_rotation=rng.uniform(-config.rotation, config.rotation),
        second_flip=rng.random() < config.flip,
        texture=rng.choice(TEXTURES),
        texture_angle=rng.uniform(0.0, 360.0),
        texture_seed=rng.randrange(2**31),
    )


def render(spec: SceneSpec) -> Image.Image:
    """The scene as a 64x64 RGB image."""
    return render_layers(spec)[0]


def render_with_mask(spec: SceneSpec) -> tuple[Image.Image, Image.Image]:
    """The scene and the first object's mask (L, 255 on the object)."""
    return render_layers(spec, with_mask=True)


def make_scene(seed: int, include_held_out: bool = False) -> Scene:
    """The scene of ``seed``: the same seed always gives the same image, caption and spec."""
    rng = random.Random(seed)
    spec = sample_spec(rng, include_held_out)
    return Scene(render(spec), caption(spec, rng), spec)
