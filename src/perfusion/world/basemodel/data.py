"""Training data for the base model: rendered world scenes, and a cache of their latents with re-sampled captions.

Held-out concepts never enter: scenes come from `make_scene(seed, include_held_out=False)`. Images are never
flipped, since captions name left and right.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfusion.training.images import images_to_tensor

POOL_FIRST_SEED = 1_000_000  # pool scenes use seeds from here on; evaluation uses its own range
VAE_SEED_RANGE = (100_000_000, 2**31 - 1)  # autoencoder scenes: fresh random seeds


@dataclass(frozen=True)
class SceneSource:
    """Where scenes come from: the world (default), or a stand-in in tests."""

    make_scene: Callable[[int], Any]  # seed -> Scene with .image (PIL 64x64 RGB), .caption, .spec
    caption: Callable[[Any, random.Random], str]  # a fresh wording of a scene's caption
    vocabulary: Callable[[], Sequence[str]]  # every word captions use
    masked: Callable[[int], tuple[Any, Any]] | None = None  # seed -> (image, mask of its objects), where known


def world_source(state_position: float | None = None, category_word: float | None = None) -> SceneSource:
    """The world's scenes; `state_position` and `category_word` override how often a fresh caption states the
    object's position and names an object by its category word (captions.CaptionChoice)."""
    from perfusion.world import scenes
    from perfusion.world.captions import CaptionChoice, describe, vocabulary

    caption = scenes.caption
    overrides = {
        name: value
        for name, value in (("state_position", state_position), ("category_word", category_word))
        if value is not None
    }
    if overrides:
        caption = functools.partial(_caption_with, describe=describe, choice=CaptionChoice(**overrides))
    return SceneSource(
        make_scene=functools.partial(scenes.make_scene, include_held_out=False),
        caption=caption,
        vocabulary=vocabulary,
    )


def families_source(pattern_word: float = 0.0, shape_word: float = 0.0) -> SceneSource:
    """The families world's training scenes (perfusion.world.families): reserved instances and the examples'
    neighbourhoods never enter. `pattern_word` and `shape_word`, where not 0, override how often a fresh caption
    names the pattern and each extreme shape parameter (captions.CaptionChoice)."""
    from perfusion.world.families import captions

    caption = captions.caption
    overrides = {name: value for name, value in (("pattern", pattern_word), ("shape", shape_word)) if value}
    if overrides:
        caption = functools.partial(
            _caption_with, describe=captions.describe, choice=captions.CaptionChoice(**overrides)
        )
    return SceneSource(
        make_scene=captions.make_scene,
        caption=caption,
        vocabulary=captions.vocabulary,
        masked=captions.masked_scene,
    )


MODEL_CAPTION_COUNT = 5000


def world_captions(world: str = "families", count: int = MODEL_CAPTION_COUNT, seed="covariance-corpus") -> list[str]:
    """Fresh captions of the world's own scenes (``"families"`` or ``"emoji"``), the same for the same arguments: by
    default the corpus for C of a model trained on that world, shipped in its folder
    (perfusion.pipeline.corpus.MODEL_CAPTIONS)."""
    if world == "families":
        from perfusion.world.families.captions import caption
        from perfusion.world.families.scenes import sample_spec
    elif world == "emoji":
        from perfusion.world.scenes import caption, sample_spec
    else:
        raise ValueError(f"unknown world {world!r} (families or emoji)")
    rng = random.Random(seed)
    return [caption(sample_spec(rng), rng) for _ in range(count)]


def _caption_with(spec, rng: random.Random, describe, choice) -> str:
    """A caption drawn with other naming rates than the world's own (a module function, so that it pickles)."""
    return describe(spec, rng, choice).text


def render_batch(source: SceneSource, seeds: Sequence[int]) -> torch.Tensor:
    return images_to_tensor([source.make_scene(int(seed)).image for seed in seeds])


def render_masked_batch(source: SceneSource, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and their objects' masks in [0, 1] (N x 1 x H x W)."""
    if source.masked is None:
        raise ValueError("this world's scenes come without object masks")
    pairs = [source.masked(int(seed)) for seed in seeds]
    masks = torch.stack([torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0) for _, mask in pairs])
    return images_to_tensor([image for image, _ in pairs]), masks[:, None]


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file then rename, so an interrupted save never leaves a broken file."""
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


class LatentPool:
    """Cached autoencoder latents (already multiplied by the scaling factor) of a fixed set of scenes, stored in
    chunk files so it can be filled over several runs and grown later. Specs are kept so captions can be
    re-worded at every use."""

    def __init__(self, directory: Path, vae_fingerprint: str, chunk_size: int = 5000):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["vae"] != vae_fingerprint:
                raise ValueError(
                    f"latent pool {self.directory} was encoded by another autoencoder; delete it to rebuild"
                )
            self.chunk_size = meta["chunk_size"]
        else:
            self.chunk_size = chunk_size
            meta_path.write_text(json.dumps({"vae": vae_fingerprint, "chunk_size": chunk_size}))

    def chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:05d}.pt"

    def chunks_done(self) -> int:
        count = 0
        while self.chunk_path(count).exists():
            count += 1
        return count

    @torch.no_grad()
    def fill(self, source: SceneSource, vae, scaling_factor: float, size: int, batch_size: int = 100, log=print):
        """Encode scenes POOL_FIRST_SEED + i, i < size (rounded up to whole chunks), skipping finished chunks."""
        chunks = -(-size // self.chunk_size)
        for index in range(self.chunks_done(), chunks):
            seeds = range(POOL_FIRST_SEED + index * self.chunk_size, POOL_FIRST_SEED + (index + 1) * self.chunk_size)
            latents, specs = [], []
            for start in range(0, len(seeds), batch_size):
                scenes = [source.make_scene(seed) for seed in seeds[start : start + batch_size]]
                images = images_to_tensor([scene.image for scene in scenes])
                latents.append((vae.encode(images).latent_dist.mean * scaling_factor).half())
                specs += [scene.spec for scene in scenes]
            atomic_torch_save(
                {"latents": torch.cat(latents), "specs": specs, "seeds": list(seeds)}, self.chunk_path(index)
            )
            log(f"latent pool: chunk {index + 1}/{chunks} written")

    def load(self) -> tuple[torch.Tensor, list]:
        latents, specs = [], []
        for index in range(self.chunks_done()):
            chunk = torch.load(self.chunk_path(index), weights_only=False)
            latents.append(chunk["latents"])
            specs += chunk["specs"]
        if not latents:
            raise FileNotFoundError(f"latent pool {self.directory} is empty")
        return torch.cat(latents), specs
