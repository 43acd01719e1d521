"""The training loop every baseline shares: latents once, Gaussian noise, (masked) MSE, prior preservation.

A method subclasses ``BaselineTrainer`` and says what it trains (``setup``), how the token reads in a prompt
(``phrase``), what it ships (``artifact``) and how it leaves the pipeline as it found it (``teardown``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from perfusion.baselines.rescale import rescaled_bank
from perfusion.method import masked_mse
from perfusion.pipeline.loader import embedding_frozen_state_kept
from perfusion.pipeline.text import encode, tokenize
from perfusion.pipeline.tokens import substitute_token_embedding
from perfusion.training.finetune import FineTuning
from perfusion.training.images import TrainingImage
from perfusion.training.latents import LatentBank, encode_images, given_masks, noised

CLASS_IMAGE_BATCH = 8  # class images generated per pipeline call (bounds memory, not results)


class BaselineError(ValueError):
    """Inputs or artifacts a baseline cannot use."""


@dataclass
class BaselineConfig:
    """Settings every baseline has; each method's subclass sets its own published defaults (SD1.5 scale)."""

    steps: int = 400  # optimizer steps
    batch_size: int = 1  # instance images per micro-batch
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # AdamW learning rate of everything the method trains
    weight_decay: float = 1e-2  # AdamW weight decay (diffusers' training scripts' default)
    max_grad_norm: float = 1.0  # gradient clipping, as in diffusers' training scripts
    resolution: int | None = None  # default: the pipeline's native size
    flip: bool = True  # random horizontal flips (each image and its mirror are both in the latent bank)
    seed: int = 0
    templates: tuple[str, ...] = ("a photo of a {}",)  # training prompts; {} is the method's phrase for the token
    use_masks: bool = False  # weight the loss by the images' masks as Perfusion does (the methods' own recipes: off)
    # Custom Diffusion's resize augmentation (perfusion.baselines.rescale): this many rescaled copies of each image,
    # the size said in the caption, the loss on the valid region. 0: off (the other methods' recipes).
    rescale_variants: int = 0
    # Also keep the artifact after these optimizer steps (BaselineResult.snapshots, artifact.at_step): training
    # length is Textual Inversion's and DreamBooth's real knob, and one run gives its whole curve.
    snapshot_steps: tuple[int, ...] = ()
    prior_preservation: bool = False  # also fit images the base model makes for the class prompt
    prior_loss_weight: float = 1.0
    class_prompt: str = "a photo of a {}"  # {} is the supercategory word
    num_class_images: int = 100
    class_inference_steps: int = 25
    class_guidance: float = 7.5
    mixed_precision: str = "no"  # "fp16"/"bf16" on a GPU: frozen modules cast down, trained tensors stay fp32

    def __post_init__(self):
        for name in ("steps", "batch_size", "gradient_accumulation"):
            if getattr(self, name) < 1:
                raise BaselineError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rescale_variants < 0:
            raise BaselineError(f"rescale_variants must be >= 0, got {self.rescale_variants}")
        self.snapshot_steps = tuple(self.snapshot_steps)
        outside = [step for step in self.snapshot_steps if not 1 <= step <= self.steps]
        if outside:
            raise BaselineError(f"snapshot step {outside[0]} is outside the training's 1..{self.steps}")

    def settings(self) -> dict:
        return asdict(self)


@dataclass
class BaselineResult:
    """What a baseline's training produced: the artifact in memory (``tensors``) until ``save`` writes it."""

    method: str
    token: str  # the name prompts use, e.g. "<mycat>"; ``phrase`` is what the method reads in its place
    supercategory: str
    phrase: str
    tensors: dict[str, torch.Tensor]  # exactly what ``save`` ships
    metadata: dict[str, str]
    seconds: float
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    path: Path | None = None  # set by ``save``
    size_bytes: int | None = None  # the saved file's size
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> tensors (snapshot_steps)


def check_masks(images: list[TrainingImage], use_masks: bool) -> None:
    if use_masks and any(item.mask is None for item in images):
        raise BaselineError("use_masks needs a mask (alpha channel or mask file) for every image")


def latent_bank(pipe, images: list[TrainingImage], size: int, flip: bool, use_masks: bool) -> LatentBank:
    check_masks(images, use_masks)
    bank = encode_images(pipe, images, size, flip)
    if use_masks:
        masks = given_masks(images, size, bank.means.shape[-1], flip)
        bank.masks, bank.mask_source = masks.to(bank.means.device), "given"
    return bank


@torch.no_grad()
def class_latent_bank(pipe, prompt: str, config: BaselineConfig) -> LatentBank:
    """Prior-preservation images made by the base model, kept as latents (a VAE round trip adds only its error)."""
    generator = torch.Generator().manual_seed(config.seed)
    batches = []
    for start in range(0, config.num_class_images, CLASS_IMAGE_BATCH):
        count = min(CLASS_IMAGE_BATCH, config.num_class_images - start)
        batches.append(
            pipe(
                prompt,
                num_inference_steps=config.class_inference_steps,
                guidance_scale=config.class_guidance,
                num_images_per_prompt=count,
                generator=generator,
                output_type="latent",
            ).images
        )
    means = torch.cat(batches).float()
    return LatentBank(means, torch.zeros_like(means), torch.ones_like(means[:, :1]))


class NewTokenEmbedding:
    """A new token's embedding row as a trained Parameter; the encoder's own rows stay frozen and unchanged.

    The token is added to the tokenizer (diffusers' textual-inversion loader) and a forward hook puts the
    Parameter in its row, so only that vector gets a gradient. ``remove`` takes the token out again.
    """

    def __init__(self, pipe, token: str, initializer: str):
        self.pipe, self.token = pipe, token
        embeddings = pipe.text_encoder.get_input_embeddings()
        initializer_ids = pipe.tokenizer(initializer, add_special_tokens=False).input_ids
        self.vector = torch.nn.Parameter(embeddings.weight[initializer_ids].detach().float().mean(0).clone())
        with embedding_frozen_state_kept(pipe.text_encoder):
            pipe.load_textual_inversion(
                self.vector.detach().to(embeddings.weight.dtype),
                token=token,
                tokenizer=pipe.tokenizer,
                text_encoder=pipe.text_encoder,
            )
        self.token_id = pipe.tokenizer.convert_tokens_to_ids(token)
        self.hook = substitute_token_embedding(pipe.text_encoder, self.token_id, self.vector)

    def remove(self) -> None:
        self.hook.remove()
        with embedding_frozen_state_kept(self.pipe.text_encoder):
            self.pipe.unload_textual_inversion(
                self.token, tokenizer=self.pipe.tokenizer, text_encoder=self.pipe.text_encoder
            )


class BaselineTrainer(FineTuning):
    method = ""
    text_trainable = False  # True when gradients flow back through the text encoder (a trained token row)
    error = BaselineError
    sdxl = False  # the baselines are SD 1.x-shaped (one text encoder)

    config: BaselineConfig

    def prepare(self) -> None:
        pipe, config = self.pipe, self.config
        size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.prefixes = None  # per bank entry: words put before its caption (the resize augmentation's)
        if config.rescale_variants:
            check_masks(self.images, config.use_masks)
            self.bank, self.prefixes = rescaled_bank(
                pipe, self.images, size, config.flip, config.rescale_variants, config.use_masks, self.generator
            )
        else:
            self.bank = latent_bank(pipe, self.images, size, config.flip, config.use_masks)
        self.class_bank = None
        if config.prior_preservation:  # made before ``setup``: by the base model itself
            self.class_bank = class_latent_bank(pipe, config.class_prompt.format(self.supercategory), config)

    # -- what a method defines --------------------------------------------------------------------
    @property
    def phrase(self) -> str:
        """What stands for the concept in the method's prompts (the token itself, or e.g. "sks cat")."""
        raise NotImplementedError

    @property
    def unet(self):
        return self.pipe.unet

    def setup(self) -> list[dict]:
        """Install what is trained; return the optimizer's parameter groups."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Leave the pipeline as it was given."""

    def artifact(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- the shared loop ----------------------------------------------------------------------------
    def sample(self, bank: LatentBank, count: int, prompts: list[str]):
        latents, masks = bank.sample(count, self.generator)
        return latents, masks, tokenize(self.pipe.tokenizer, prompts)

    def instance_prompts(self, count: int) -> list[str]:
        templates = self.config.templates
        chosen = torch.randint(len(templates), (count,), generator=self.generator).tolist()
        return [templates[i].format(self.phrase) for i in chosen]

    def micro_batch_loss(self) -> torch.Tensor:
        config = self.config
        prompts = self.instance_prompts(config.batch_size)
        latents, masks, index = self.bank.draw(config.batch_size, self.generator)
        if self.prefixes is not None:
            prompts = [self.prefixes[i] + prompt for i, prompt in zip(index.tolist(), prompts)]
        ids = tokenize(self.pipe.tokenizer, prompts)
        if self.class_bank is not None:  # DreamBooth's prior preservation: one batch, two losses
            class_prompt = config.class_prompt.format(self.supercategory)
            class_latents, class_masks, class_ids = self.sample(
                self.class_bank, config.batch_size, [class_prompt] * config.batch_size
            )
            latents, masks, ids = (
                torch.cat([latents, class_latents]),
                torch.cat([masks, class_masks]),
                torch.cat([ids, class_ids]),
            )
        noisy, timesteps, target = noised(self.forward_process, latents, self.generator)
        with self.accelerator.autocast():
            with torch.set_grad_enabled(self.text_trainable):
                encodings = encode(self.pipe.text_encoder, ids)
            prediction = self.unet(noisy.to(self.weight_dtype), timesteps, encoder_hidden_states=encodings).sample
        if self.class_bank is None:
            return masked_mse(prediction, target, masks)
        (instance, prior), (instance_target, prior_target) = prediction.chunk(2), target.chunk(2)
        instance_masks, prior_masks = masks.chunk(2)
        return masked_mse(instance, instance_target, instance_masks) + config.prior_loss_weight * masked_mse(
            prior, prior_target, prior_masks
        )

    def step(self) -> float:
        total = 0.0
        for _ in range(self.config.gradient_accumulation):
            loss = self.micro_batch_loss() / self.config.gradient_accumulation
            self.accelerator.backward(loss)
            total += loss.item()
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def run(self, progress: bool = True, on_snapshot: Callable[[int, dict], None] | None = None) -> BaselineResult:
        """Train; at each of the config's snapshot_steps hand (step, tensors) to ``on_snapshot`` (e.g. to write it
        and let it go: the time it takes is not counted), or keep them in the result's ``snapshots``."""
        started, snapshot_seconds = time.perf_counter(), 0.0
        groups = self.setup()
        try:
            self.parameters = [parameter for group in groups for parameter in group["params"]]
            optimizer = torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)
            self.optimizer = self.accelerator.prepare(optimizer)
            bar = tqdm(range(self.config.steps), desc=f"{self.method} {self.token}", disable=not progress)
            snapshots = {}
            for done in bar:
                self.losses.append(self.step())
                bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
                if done + 1 in self.config.snapshot_steps:
                    if on_snapshot is None:
                        snapshots[done + 1] = self.detached_artifact()
                    else:
                        handed = time.perf_counter()
                        on_snapshot(done + 1, self.detached_artifact())
                        snapshot_seconds += time.perf_counter() - handed
            tensors = self.detached_artifact()
        finally:
            self.teardown()
            self.restore_pipeline()
        metadata = {
            "method": self.method,
            "token": self.token,
            "supercategory": self.supercategory,
            "phrase": self.phrase,
            "base_fingerprint": self.fingerprint,
            "settings": json.dumps(self.config.settings()),
        }
        return BaselineResult(
            self.method,
            self.token,
            self.supercategory,
            self.phrase,
            tensors,
            metadata,
            self.prepare_seconds + time.perf_counter() - started - snapshot_seconds,
            self.config.steps,
            self.losses,
            snapshots=snapshots,
        )

    def detached_artifact(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().float().cpu().clone().contiguous() for name, tensor in self.artifact().items()}


class RareWordTrainer(BaselineTrainer):
    """DreamBooth-style prompts: a rare word the tokenizer already has before the class word ("a photo of sks cat").

    The token (e.g. "<mycat>") only names the concept in the benchmark's prompts; ``config.identifier`` is trained.
    """

    def check_token(self) -> None:
        if not self.config.identifier.strip():
            raise BaselineError(f"the {self.method} identifier is empty")

    @property
    def phrase(self) -> str:
        return f"{self.config.identifier} {self.supercategory}"
