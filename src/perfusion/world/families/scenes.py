"""Scenes of the families world: one instance, or two side by side, on a coloured ground, at a position and a size,
in a pose; rendered at 4x and box-downsampled to 64x64. Everything is decided by a seed.

    scene = make_scene(seed)                      # Scene(image, caption, spec)
    image, mask = render_with_mask(spec)          # the first object's mask
    photos(instance, count, seed)                 # "photos" of one instance, with masks: varied pose and scene
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .categories import CATEGORY_NAMES, category
from .draw import draw
from .instances import Instance, sample_training_instance, seen_instances
from .palette import BACKGROUND_TEXTURES, BACKGROUNDS, colour_distance

OUTPUT_SIDE = 64
SUPERSAMPLE = 4
POSITIONS = ("left", "right", "top", "bottom", "centre")
PAIR_POSITIONS = ("left", "right")  # the first object's side; the second takes the other
SIZES = ("small", "medium", "large")
FACINGS = ("left", "right")
SINGLE_SIDE = {"small": 26.0, "medium": 36.0, "large": 46.0}  # the object's longer side, output pixels
PAIR_SIDE = {"small": 22.0, "medium": 26.0, "large": 30.0}
PAIR_CENTRES = (16.0, 48.0)
MIN_CONTRAST = 0.16  # a background at least this far (colour_distance) from the object's body colour


@dataclass(frozen=True)
class Placement:
    """One object in a scene: its instance and how it stands there (none of this is identity)."""

    instance: Instance
    pose: str = "standing"
    facing: str = "right"
    tilt: float = 0.0  # degrees, counter-clockwise
    dx: float = 0.0  # shift of the centre, output pixels
    dy: float = 0.0
    scale: float = 1.0  # multiplies the size's nominal side


@dataclass(frozen=True)
class SceneSpec:
    """What decides a scene's pixels. ``position`` is the object's place, or in a pair the first object's side."""

    first: Placement
    background: str
    position: str
    size: str
    second: Placement | None = None
    texture: str = "plain"
    texture_angle: float = 0.0
    texture_seed: int = 0

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"SceneSpec.background={self.background!r}; expected one of: {', '.join(BACKGROUNDS)}")
        if self.size not in SIZES:
            raise ValueError(f"SceneSpec.size={self.size!r}; expected one of: {', '.join(SIZES)}")
        allowed = POSITIONS if self.second is None else PAIR_POSITIONS
        if self.position not in allowed:
            raise ValueError(f"SceneSpec.position={self.position!r}; expected one of: {', '.join(allowed)}")

    @property
    def placements(self) -> tuple[Placement, ...]:
        return (self.first,) if self.second is None else (self.first, self.second)

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(placement.instance for placement in self.placements)


@dataclass(frozen=True)
class WorldSampling:
    """How scenes are drawn for the base model."""

    second_object: float = 0.2  # chance of a two-object scene
    seen_share: float = 0.05  # chance that an object is one of its category's seen instances
    size_weights: tuple[float, float, float] = (0.2, 0.4, 0.4)  # small, medium, large: identity must be readable
    sitting: float = 0.35  # of pets that can sit
    tilt: float = 10.0
    shift: float = 2.0
    scale: tuple[float, float] = (0.93, 1.07)


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    caption: str
    spec: SceneSpec


def sample_placement(instance: Instance, rng: random.Random, sampling: WorldSampling = WorldSampling()) -> Placement:
    poses = category(instance.category).poses
    pose = "sitting" if "sitting" in poses and rng.random() < sampling.sitting else "standing"
    return Placement(
        instance,
        pose,
        rng.choice(FACINGS),
        rng.uniform(-sampling.tilt, sampling.tilt),
        rng.uniform(-sampling.shift, sampling.shift),
        rng.uniform(-sampling.shift, sampling.shift),
        rng.uniform(*sampling.scale),
    )


def sample_instance(rng: random.Random, sampling: WorldSampling = WorldSampling(), name: str | None = None) -> Instance:
    """A training instance of a random (or the given) category: a seen one now and then, otherwise a fresh one."""
    name = name or rng.choice(CATEGORY_NAMES)
    if rng.random() < sampling.seen_share:
        return rng.choice(seen_instances(name))
    return sample_training_instance(name, rng)


def pick_background(rng: random.Random, instances: tuple[Instance, ...]) -> str:
    """A named background that every object's body colour stands out from."""
    usable = [
        name
        for name, colour in BACKGROUNDS.items()
        if all(colour_distance(colour, instance.colour) >= MIN_CONTRAST for instance in instances)
    ]
    return rng.choice(usable or list(BACKGROUNDS))


def sample_spec(rng: random.Random, sampling: WorldSampling = WorldSampling()) -> SceneSpec:
    first = sample_instance(rng, sampling)
    second = None
    if rng.random() < sampling.second_object:
        second = sample_instance(rng, sampling, rng.choice([n for n in CATEGORY_NAMES if n != first.category]))
    instances = (first,) if second is None else (first, second)
    return SceneSpec(
        first=sample_placement(first, rng, sampling),
        background=pick_background(rng, instances),
        position=rng.choice(POSITIONS if second is None else PAIR_POSITIONS),
        size=rng.choices(SIZES, weights=sampling.size_weights)[0],
        second=None if second is None else sample_placement(second, rng, sampling),
        texture=rng.choice(BACKGROUND_TEXTURES),
        texture_angle=rng.uniform(0.0, 360.0),
        texture_seed=rng.randrange(2**31),
    )


# ---- rendering


def object_boxes(spec: SceneSpec) -> list[tuple[float, float, float]]:
    """(centre x, centre y, longer side) of each object, output pixels."""
    if spec.second is None:
        side = SINGLE_SIDE[spec.size] * spec.first.scale
        offset = max(0.0, (OUTPUT_SIDE - side) / 2 - 1)
        ux, uy = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "centre": (0, 0)}[spec.position]
        centre = OUTPUT_SIDE / 2
        return [(centre + ux * offset + spec.first.dx, centre + uy * offset + spec.first.dy, side)]
    left, right = PAIR_CENTRES
    first_x, second_x = (left, right) if spec.position == "left" else (right, left)
    centre = OUTPUT_SIDE / 2
    return [
        (x + placement.dx, centre + placement.dy, PAIR_SIDE[spec.size] * placement.scale)
        for x, placement in ((first_x, spec.first), (second_x, spec.second))
    ]


def background(spec: SceneSpec) -> Image.Image:
    side = OUTPUT_SIDE * SUPERSAMPLE
    colour = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    pixels = np.broadcast_to(colour, (side, side, 3)).astype(np.float32)
    if spec.texture == "gradient":
        ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
        angle = np.deg2rad(spec.texture_angle)
        field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        pixels = pixels * (1.0 + 0.12 * field[..., None])
    elif spec.texture == "noise":
        pixels = pixels + np.random.default_rng(spec.texture_seed).normal(0.0, 5.0, (side, side, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGBA")


@functools.lru_cache(maxsize=64)
def cropped_sprite(instance: Instance, pose: str) -> Image.Image:
    """The instance's sprite cut to its content (seen instances recur, so a few are kept)."""
    sprite = draw(instance, pose)
    return sprite.crop(sprite.getbbox())


def placed_sprite(placement: Placement, side: float) -> Image.Image:
    """The sprite scaled so that its longer side is `side` output pixels, mirrored and tilted, at drawing resolution."""
    sprite = cropped_sprite(placement.instance, placement.pose)
    factor = side * SUPERSAMPLE / max(sprite.size)
    sprite = sprite.resize((max(1, round(sprite.width * factor)), max(1, round(sprite.height * factor))), Image.LANCZOS)
    if placement.facing == "left":
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    if placement.tilt:
        sprite = sprite.rotate(placement.tilt, resample=Image.BICUBIC, expand=True)
    return sprite


def render_with_mask(
    spec: SceneSpec, sprite_filter=None, every_object: bool = False
) -> tuple[Image.Image, Image.Image]:
    """The 64x64 RGB scene and the first object's mask (L, 255 on the object), or with ``every_object`` the mask of
    all its objects. ``sprite_filter(index, sprite)``, if given, may replace each placed sprite (the judge's
    negatives: an object's colours without its shape)."""
    canvas = background(spec)
    mask = Image.new("L", canvas.size, 0)
    for index, (placement, (x, y, side)) in enumerate(zip(spec.placements, object_boxes(spec))):
        sprite = placed_sprite(placement, side)
        if sprite_filter is not None:
            sprite = sprite_filter(index, sprite)
        corner = (round(x * SUPERSAMPLE - sprite.width / 2), round(y * SUPERSAMPLE - sprite.height / 2))
        canvas.alpha_composite(sprite, corner)
        if index == 0 or every_object:
            mask.paste(sprite.getchannel("A"), corner, sprite.getchannel("A"))
    return canvas.convert("RGB").reduce(SUPERSAMPLE), mask.reduce(SUPERSAMPLE)


def render(spec: SceneSpec) -> Image.Image:
    return render_with_mask(spec)[0]


def photos(
    instance: Instance,
    count: int,
    seed: int,
    sizes: tuple[str, ...] = ("medium", "large"),
    positions: tuple[str, ...] = POSITIONS,
) -> list[tuple[Image.Image, Image.Image, SceneSpec]]:
    """``count`` photos of one instance, as a user would take them: varied pose, facing, ground, position and size
    (medium or large by default); each with its mask and spec."""
    rng = random.Random(f"photos/{seed}")
    shots = []
    for _ in range(count):
        spec = SceneSpec(
            first=sample_placement(instance, rng),
            background=pick_background(rng, (instance,)),
            position=rng.choice(positions),
            size=rng.choice(sizes),
            texture=rng.choice(BACKGROUND_TEXTURES),
            texture_angle=rng.uniform(0.0, 360.0),
            texture_seed=rng.randrange(2**31),
        )
        image, mask = render_with_mask(spec)
        shots.append((image, mask, spec))
    return shots


def with_instance(spec: SceneSpec, instance: Instance) -> SceneSpec:
    """The same scene with another first object."""
    return replace(spec, first=replace(spec.first, instance=instance))
