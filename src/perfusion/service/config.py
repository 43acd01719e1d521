"""The service's settings: where it keeps its state, and every cap and quota, as one dataclass that checks itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ServiceConfigError(ValueError):
    """Settings the service cannot start with."""


@dataclass
class ServiceConfig:
    model: str  # a diffusers pipeline folder (the embedded model by default, see perfusion serve)
    data: Path  # the service's folder: its database, concept files, job folders and images
    # uploads
    max_request_bytes: int = 64 << 20  # a whole request body
    max_image_bytes: int = 16 << 20  # one uploaded image
    max_image_pixels: int = 4096 * 4096  # one image, after decoding the header (decompression bombs)
    min_images: int = 1
    max_images: int = 16
    max_concept_bytes: int = 8 << 20  # an uploaded concept file
    # generation
    max_prompt_chars: int = 500
    max_steps: int = 100
    max_images_per_request: int = 8
    max_guidance: float = 30.0
    batch_rows: int = 8  # image rows in one pipeline call
    batch_window_s: float = 0.05  # how long a batch waits for more requests once the first arrived
    queue_limit: int = 64  # generation requests waiting; one more is refused (503)
    max_pending_per_user: int = 16  # generation requests one user may have waiting (429 beyond)
    cache_concepts: int = 2048  # concepts loaded in the running pipeline at once (least recently used leave)
    # training
    training_steps: int | None = None  # None: the model's recipe (perfusion_recipe.json) or TrainingConfig's
    max_training_steps: int = 2000
    checkpoint_every: int = 10  # optimizer steps between a job's checkpoints (a restart loses at most these)
    job_queue_limit: int = 32  # training jobs queued or running, all users
    # per user
    max_concepts_per_user: int = 200
    max_jobs_per_user: int = 2  # queued or running

    def __post_init__(self):
        self.data = Path(self.data)
        for name in (
            "max_request_bytes",
            "max_image_bytes",
            "max_image_pixels",
            "min_images",
            "max_images",
            "max_concept_bytes",
            "max_prompt_chars",
            "max_steps",
            "max_images_per_request",
            "batch_rows",
            "queue_limit",
            "max_pending_per_user",
            "cache_concepts",
            "max_training_steps",
            "checkpoint_every",
            "job_queue_limit",
            "max_concepts_per_user",
            "max_jobs_per_user",
        ):
            if getattr(self, name) < 1:
                raise ServiceConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_images > self.max_images:
            raise ServiceConfigError("min_images is above max_images")
        if self.batch_window_s < 0 or self.max_guidance < 0:
            raise ServiceConfigError("batch_window_s and max_guidance must not be negative")
        if self.training_steps is not None and not 1 <= self.training_steps <= self.max_training_steps:
            raise ServiceConfigError(f"training_steps must lie in [1, {self.max_training_steps}]")

    @property
    def database(self) -> Path:
        return self.data / "perfusion.db"

    def folder(self, name: str) -> Path:
        path = self.data / name
        path.mkdir(parents=True, exist_ok=True)
        return path
