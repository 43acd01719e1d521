"""What every fine-tuning of a frozen pipeline shares: Perfusion's ConceptTrainer and the baselines' trainers."""

from __future__ import annotations

import time

import torch

from perfusion.concept.format import MAX_SUPERCATEGORY_LENGTH
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.fingerprint import pipeline_fingerprint
from perfusion.pipeline.models import UnsupportedPipelineError, check_supported
from perfusion.pipeline.tokens import check_new_token
from perfusion.training.frozen import freeze
from perfusion.training.images import TrainingImage
from perfusion.training.latents import forward_process


class FineTuning:
    """Checks the inputs, freezes the pipeline (recording it as given), seeds, and builds the forward process.

    ``config`` needs ``seed`` and ``mixed_precision``; a subclass sets ``error`` (the exception its bad inputs raise)
    and may override ``check_token``. ``restore_pipeline`` leaves the pipeline as it was given.
    """

    error: type[ValueError] = ValueError
    method = "Perfusion"
    sdxl = True  # whether the method trains on pipelines with two text encoders

    def __init__(self, pipe, images: list[TrainingImage], token: str, supercategory: str, config):
        check_supported(pipe)
        if not self.sdxl and getattr(pipe, "text_encoder_2", None) is not None:
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__}: the {self.method} baseline trains on pipelines "
                "with one text encoder (Stable Diffusion 1.x and 2.x), not SDXL"
            )
        if not images:
            raise self.error("no training images")
        self.pipe, self.images, self.token, self.supercategory, self.config = pipe, images, token, supercategory, config
        self.check_token()
        if not supercategory.strip():
            raise self.error("the supercategory word is empty")
        if len(supercategory) > MAX_SUPERCATEGORY_LENGTH:  # a file with a longer one would not load
            raise self.error(
                f"the supercategory is {len(supercategory)} characters long (at most {MAX_SUPERCATEGORY_LENGTH})"
            )
        self.fingerprint = pipeline_fingerprint(pipe)  # of the weights as given, not as cast down for training
        frozen = freeze(pipe, config.mixed_precision)
        self.accelerator, self.device, self.weight_dtype = frozen.accelerator, frozen.device, frozen.weight_dtype
        self.pipeline_before = frozen.before
        self.generator = torch.Generator().manual_seed(config.seed)
        self.forward_process = forward_process(pipe.scheduler)  # built once: noised() runs every step
        self.losses: list[float] = []
        started = time.perf_counter()
        try:
            self.prepare()
        except BaseException:  # a set-up that fails leaves the pipeline as it was given
            self.restore_pipeline()
            raise
        self.prepare_seconds = time.perf_counter() - started  # counted in the training time the run reports

    def prepare(self) -> None:
        """A method's own set-up on the frozen pipeline (latents, masks, its starting tensors)."""

    def check_token(self) -> None:
        for tower in TextConditioning.of(self.pipe).towers:
            check_new_token(tower.tokenizer, self.token)

    def restore_pipeline(self) -> None:
        self.pipeline_before.restore(self.pipe)
