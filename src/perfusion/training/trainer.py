"""Training a concept: v* and one o*_V per layer, K locked to the supercategory, i* tracked by EMA."""

from __future__ import annotations

import math
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import DEFAULT_BETA, DEFAULT_TAU, GATE_SCOPES, Concept
from perfusion.files import atomic_torch_save
from perfusion.method import ema_update, masked_mse
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.pipeline.settings import check_gate
from perfusion.pipeline.tokens import substitute_token_embedding
from perfusion.training.finetune import FineTuning
from perfusion.training.images import TrainingImage
from perfusion.training.latents import LatentBank, encode_images, given_masks, noised
from perfusion.training.masks import attention_masks
from perfusion.training.pairs import pair_caption, paired_images
from perfusion.training.values import TrainedValues, ValueSpace, check_value_space

DEFAULT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
    "a photo of one {}",
    "a photo of the small {}",
    "a photo of the large {}",
)


class TrainingError(ValueError):
    """Training inputs that cannot be used."""


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainingConfig:
    """Perfusion training settings; the defaults are docs/method.md's SD1.5 recipe. A base model folder may carry its
    own (perfusion.recipes); `perfusion train`'s flags are made from these fields."""

    steps: int = field(default=400, metadata=_help("optimizer steps"))
    batch_size: int = field(default=4, metadata=_help("images per micro-batch"))
    gradient_accumulation: int = field(default=4, metadata=_help("micro-batches per optimizer step"))
    lr_embedding: float = field(default=6e-3, metadata=_help("learning rate of v*, the token's input embedding"))
    lr_values: float = field(default=3e-2, metadata=_help("learning rate of o*_V, one per cross-attention layer"))
    value_space: ValueSpace = field(
        default="free",
        metadata=_help(
            "how o*_V is trained: free: a vector per layer (the paper); encoding: W_V e with a trained encoding e per "
            "layer; shared-encoding: W_V e with one e for every layer"
        ),
    )
    weight_decay: float = 0.0
    train_beta: float = field(default=0.75, metadata=_help("the gate's beta while training"))
    train_tau: float = field(default=0.1, metadata=_help("the gate's tau while training"))
    ema_decay: float = field(default=0.99, metadata=_help("i* <- decay i* + (1 - decay) e_concept"))
    beta: float = field(default=DEFAULT_BETA, metadata=_help("the beta written into the concept file for generation"))
    tau: float = field(default=DEFAULT_TAU, metadata=_help("the tau written into the concept file"))
    resolution: int | None = field(default=None, metadata=_help("training size (default: the pipeline's native)"))
    flip: bool = field(default=True, metadata=_help("random horizontal flips (--no-flip: none)"))
    seed: int = 0
    templates: list[str] = field(
        default_factory=lambda: list(DEFAULT_TEMPLATES), metadata=_help("caption templates with {} for the token")
    )
    # Paired images (perfusion.training.pairs): the object beside an empty half, captioned "<token> next to a <word>"; off in
    # the SD1.5 recipe. Needs masks; each training sample is a paired one with this probability.
    pair_probability: float = field(default=0.0, metadata=_help("share of training samples that are paired images"))
    pair_words: list[str] = field(
        default_factory=list,
        metadata=_help('also train "TOKEN next to a WORD" on the object cut onto one half (needs masks)'),
    )
    pair_side: float = field(default=0.4, metadata=_help("the paired object's longer side, a fraction of the width"))
    pair_template: str = "a photo of a {} next to a {}"
    mask_prompt: str = field(
        default="a photo of a {}", metadata=_help("read for the supercategory's attention map when no mask is given")
    )
    mask_timestep: float = field(default=0.4, metadata=_help("fraction of the schedule at which that map is read"))
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = field(
        default="auto",
        metadata=_help(
            "auto: the pipeline's own precision (fp16 on a GPU, bf16 anywhere; fp32 for an fp16 pipeline on a CPU); "
            "no: fp32; fp16 or bf16: frozen modules cast to it, trained tensors fp32"
        ),
    )
    checkpoint_every: int = field(default=50, metadata=_help("optimizer steps between resumable checkpoints"))
    gate_scope: Literal["except-word", "prompt", "all"] = field(
        default="except-word",
        metadata=_help(
            "where the edit acts, in training and wherever the concept is used: except-word: every position but the "
            "plain supercategory word; prompt: besides, not the padding after the first end-of-text; all: every "
            "position (the paper)"
        ),
    )

    def __post_init__(self):
        self.templates, self.pair_words = list(self.templates), list(self.pair_words)
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_embedding", "lr_values"):
            if not getattr(self, name) >= 0:
                raise TrainingError(f"{name} must not be negative, got {getattr(self, name)}")
        try:
            check_value_space(self.value_space)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        if not 0.0 <= self.pair_probability <= 1.0:
            raise TrainingError(f"pair_probability must lie in [0, 1], got {self.pair_probability}")
        if self.pair_probability > 0 and not self.pair_words:
            raise TrainingError("paired images (pair_probability > 0) need at least one word in pair_words")
        if not 0.0 < self.pair_side <= 1.0 or not 0.0 <= self.mask_timestep <= 1.0 or not 0.0 <= self.ema_decay <= 1.0:
            raise TrainingError("pair_side must lie in (0, 1], mask_timestep and ema_decay in [0, 1]")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):  # as the pipelines generate
            raise TrainingError(f"resolution must be a positive multiple of 8 pixels, got {self.resolution}")
        if self.gate_scope not in GATE_SCOPES:
            raise TrainingError(f"gate_scope must be one of {', '.join(GATE_SCOPES)}, got {self.gate_scope!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise TrainingError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if not self.templates or any("{}" not in template for template in self.templates):
            raise TrainingError("every caption template needs {} where the token goes")
        if self.mask_prompt.count("{}") != 1 or self.pair_template.count("{}") != 2:
            raise TrainingError("mask_prompt needs one {} (the supercategory), pair_template two (the token, the word)")
        for beta, tau in ((self.train_beta, self.train_tau), (self.beta, self.tau)):
            try:
                check_gate(beta, tau)
            except ValueError as error:
                raise TrainingError(str(error)) from None


@dataclass
class TrainingResult:
    concept: Concept
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    seconds: float = 0.0
    held_out_loss: tuple[float, float] = (float("nan"), float("nan"))  # fixed noise and timesteps: before, after
    # o*_V against where it started, W_V i*_super, averaged over layers: |o*_V| / |W_V i*_super| and their cosine.
    # A ratio far above 1 at a low cosine is a value the UNet never read: noise squares (docs/method.md)
    value_drift: tuple[float, float] = (float("nan"), float("nan"))


class ConceptTrainer(FineTuning):
    error = TrainingError

    config: TrainingConfig

    def prepare(self) -> None:
        config = self.config
        self.text = TextConditioning.of(self.pipe)
        self.bank = self.encode_images()
        self.pair_bank = None
        if config.pair_probability > 0 and self.bank.mask_source != "given":
            # Paired images are cut out along the objects' masks: photos without masks train without them.
            warnings.warn("the photos have no masks: training without paired images (they need the objects' masks)")
        elif config.pair_probability > 0:
            self.pair_bank = self.encode_pairs()
        self.concept = self.initial_concept()
        self.start_step = 0

    # -- set-up -------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.config.resolution or self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def encode_images(self, images: list[TrainingImage] | None = None) -> LatentBank:
        """Latents once (of ``images``, default the training images); the masks the images bring, else the
        supercategory's cross-attention map."""
        images, size = images or self.images, self.resolution
        bank = encode_images(self.pipe, images, size, self.config.flip)
        masks = given_masks(images, size, bank.means.shape[-1], self.config.flip)
        if masks is not None:
            bank.masks, bank.mask_source = masks.to(self.device), "given"
        elif any(item.mask is not None for item in images):
            raise TrainingError("some images have masks and some do not: give a mask for every image or for none")
        else:
            bank.masks = attention_masks(
                self.pipe,
                bank.means.to(self.weight_dtype),
                self.supercategory,
                self.config.mask_prompt,
                self.config.mask_timestep,
                self.config.seed,
            ).float()
            bank.mask_source = "attention"
        return bank

    def encode_pairs(self) -> LatentBank:
        """Latents and masks of the paired images (perfusion.training.pairs), built from the given masks."""
        if self.bank.mask_source != "given":
            raise TrainingError("paired images need the objects' masks (an alpha channel or --mask-dir)")
        if not self.config.pair_words:
            raise TrainingError("paired images need at least one word for the other object (pair_words)")
        try:
            paired = paired_images(self.images, self.config.pair_side)
        except ValueError as error:  # an empty mask
            raise TrainingError(str(error)) from None
        return self.encode_images(paired)  # every paired image has its mask

    def pair_prompts_ids(self, count: int) -> list[torch.Tensor]:
        words = self.config.pair_words
        chosen = torch.randint(len(words), (count,), generator=self.generator)
        concept_first = torch.rand(count, generator=self.generator) < 0.5
        texts = [
            pair_caption(self.config.pair_template, self.token, words[i], bool(first))
            for i, first in zip(chosen, concept_first)
        ]
        return self.text.tokenize(texts)

    def prompts_ids(self, word: str, count: int | None = None) -> list[torch.Tensor]:
        """Each text encoder's ids of ``count`` random caption templates (all of them, once each, when None)."""
        templates = self.config.templates
        if count is None:
            chosen = list(templates)
        else:
            chosen = [templates[i] for i in torch.randint(len(templates), (count,), generator=self.generator)]
        return self.text.tokenize([template.format(word) for template in chosen])

    @torch.no_grad()
    def supercategory_values(self, encoding: torch.Tensor) -> dict[str, torch.Tensor]:
        """W_V i*_super in every cross-attention layer: where o*_V starts, and what value_drift compares it with."""
        return {name: self.values.value(name, encoding) for name in self.values.attentions}

    def initial_concept(self) -> Concept:
        # v* of each text encoder starts at the mean of the supercategory word's embeddings there
        embeddings = [
            torch.nn.Parameter(tower.word_embeddings(self.supercategory).float().mean(0)) for tower in self.text.towers
        ]
        # Local key locking: i*_super is the supercategory word's encoding in the first batch of prompts.
        supercategory_encoding = self.text.mean_word_encoding(
            self.prompts_ids(self.supercategory), self.text.supercategory_ids(self.supercategory)
        )
        # o*_V starts at W_V i*_super, trained as TrainingConfig.value_space says
        self.values = TrainedValues(
            self.config.value_space, cross_attention_modules(self.pipe.unet), supercategory_encoding
        )
        with torch.no_grad():
            value_targets = self.values.targets()
        return Concept(
            token=self.token,
            supercategory=self.supercategory,
            token_embeddings=embeddings,
            concept_encoding=supercategory_encoding,
            supercategory_encoding=supercategory_encoding,
            value_targets=value_targets,
            base_fingerprint=self.fingerprint,
            beta=self.config.beta,
            tau=self.config.tau,
            training={"gate_scope": self.config.gate_scope},  # the registry reads where its edit acts from here
        )

    def install(
        self, captions: list[str] | None = None, inverse_covariance: torch.Tensor | None = None, progress: bool = False
    ) -> None:
        pipe = self.pipe
        load_concepts(
            pipe, self.concept, captions=captions, inverse_covariance=inverse_covariance, check=False, progress=progress
        )
        self.runtime = find_runtime(pipe)
        self.value_start = self.supercategory_values(self.concept.supercategory_encoding)
        self.corpus = self.runtime.corpus  # recorded in the file: the C its i* was tracked against
        self.runtime.train_value_targets(self.token, self.concept.value_targets)  # the trainer's own tensors
        self.runtime.set_options(self.token, beta=self.config.train_beta, tau=self.config.train_tau)
        self.token_id = self.runtime.token_id(self.token)  # the same position in every tower's ids
        self.embedding_hooks = [  # each v* enters through the token's embedding row of its text encoder
            substitute_token_embedding(tower.text_encoder, self.runtime.token_id(self.token, index), vector)
            for index, (tower, vector) in enumerate(zip(self.text.towers, self.concept.token_embeddings))
        ]
        if self.start_step == 0:
            concept_ids = self.prompts_ids(self.token)
            self.move_concept_encoding(self.text.mean_word_encoding(concept_ids, [self.token_id]))
        trainable = [
            {"params": self.concept.token_embeddings, "lr": self.config.lr_embedding},
            {"params": list(self.values.parameters.values()), "lr": self.config.lr_values},
        ]
        self.optimizer = self.accelerator.prepare(torch.optim.AdamW(trainable, weight_decay=self.config.weight_decay))

    def move_concept_encoding(self, encoding: torch.Tensor) -> None:
        """i* is tracked, never trained: the trainer's concept and the installed one both take the new value."""
        self.concept.concept_encoding = encoding.detach()
        self.runtime.set_concept_encoding(self.token, encoding)

    def uninstall(self) -> None:
        for hook in self.embedding_hooks:
            hook.remove()
        unload_concepts(self.pipe, self.token)

    # -- one optimizer step -------------------------------------------------------------------
    def micro_batch(self):
        """Latents, noise, prompts and SDXL time ids of one micro-batch; the paired samples (if any) come last."""
        count, paired = self.config.batch_size, 0
        if self.pair_bank is not None:
            paired = int((torch.rand(count, generator=self.generator) < self.config.pair_probability).sum())
        latents, masks, index = self.bank.draw(count - paired, self.generator)
        time_ids = self.bank.time_ids(index, self.resolution)
        if paired:
            pair_latents, pair_masks, pair_index = self.pair_bank.draw(paired, self.generator)
            latents, masks = torch.cat([latents, pair_latents]), torch.cat([masks, pair_masks])
            time_ids = torch.cat([time_ids, self.pair_bank.time_ids(pair_index, self.resolution)])
        noisy, timesteps, target = noised(self.forward_process, latents, self.generator)
        ids = [self.prompts_ids(self.token, count - paired)] if paired < count else []
        ids += [self.pair_prompts_ids(paired)] if paired else []
        return noisy, timesteps, target, masks, [torch.cat(tower_ids) for tower_ids in zip(*ids)], time_ids

    def refresh_values(self) -> None:
        """o*_V from its trained tensors, handed to the edit (in place already when they are o*_V themselves)."""
        if self.values.space != "free":
            self.concept.value_targets = self.values.targets()
            self.runtime.train_value_targets(self.token, self.concept.value_targets)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: list[torch.Tensor], time_ids=None):
        """The UNet's prediction for ``ids`` (conditioned as the pipeline conditions it), and the encodings e."""
        self.refresh_values()
        conditions = self.text.unet_conditions(ids, self.resolution, self.weight_dtype, time_ids)
        prediction = self.pipe.unet(noisy.to(self.weight_dtype), timesteps, **conditions).sample
        return prediction, conditions["encoder_hidden_states"]

    @torch.no_grad()
    def held_out_loss(self, batches: int = 8, seed: int = 12345) -> float:
        """The loss on a fixed draw of images, noise, timesteps and prompts: comparable across training."""
        training_generator, self.generator = self.generator, torch.Generator().manual_seed(seed)
        try:
            total = 0.0
            for _ in range(batches):
                noisy, timesteps, target, masks, ids, time_ids = self.micro_batch()
                with self.accelerator.autocast():
                    prediction, _ = self.predict(noisy, timesteps, ids, time_ids)
                total += masked_mse(prediction, target, masks).item() / batches
            return total
        finally:
            self.generator = training_generator

    def step(self) -> float:
        config = self.config
        observed, total = [], 0.0
        for _ in range(config.gradient_accumulation):
            noisy, timesteps, target, masks, ids, time_ids = self.micro_batch()
            with self.accelerator.autocast():
                prediction, encodings = self.predict(noisy, timesteps, ids, time_ids)
            loss = masked_mse(prediction, target, masks)
            self.accelerator.backward(loss / config.gradient_accumulation)
            observed.append(encodings[(ids[0] == self.token_id).to(self.device)].detach().float().mean(0))
            total += loss.item() / config.gradient_accumulation
        if not math.isfinite(total):  # before the step: v* and o*_V (and the last checkpoint) stay as they were
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"the loss is not finite ({total}) at step {len(self.losses) + 1}: training stopped, "
                "the last checkpoint (if any) is kept; lower the learning rates or check the images"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.move_concept_encoding(
            ema_update(self.concept.concept_encoding, torch.stack(observed).mean(0), config.ema_decay)
        )
        return total

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, step: int) -> None:
        atomic_torch_save(
            {
                "token": self.token,
                "supercategory": self.supercategory,
                "step": step,
                "token_embeddings": [vector.detach().cpu() for vector in self.concept.token_embeddings],
                "concept_encoding": self.concept.concept_encoding.detach().cpu(),
                "supercategory_encoding": self.concept.supercategory_encoding.detach().cpu(),
                "value_targets": {k: v.detach().cpu() for k, v in self.concept.value_targets.items()},
                "values": self.values.state(),  # what is trained: o*_V itself, or the encodings it is W_V of
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "losses": self.losses,
                "config": asdict(self.config),
            },
            path,
        )

    def load_checkpoint(self, path: Path) -> dict:
        if not path.is_file():
            raise TrainingError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise TrainingError(f"{path}: unreadable checkpoint ({error})") from None
        if (state["token"], state["supercategory"]) != (self.token, self.supercategory):
            raise TrainingError(
                f"{path}: a checkpoint of {state['token']} ({state['supercategory']}), not of {self.token}"
            )
        scope = state.get("config", {}).get("gate_scope", "all")  # runs begun before the scope was recorded: all
        if scope != self.config.gate_scope:
            raise TrainingError(
                f"{path}: a checkpoint of a run with gate_scope {scope!r}, not {self.config.gate_scope!r} "
                f"(resume with --gate-scope {scope})"
            )
        space = state.get("config", {}).get("value_space", "free")
        if space != self.config.value_space:
            raise TrainingError(
                f"{path}: a checkpoint of a run with value_space {space!r}, not {self.config.value_space!r} "
                f"(resume with --value-space {space})"
            )
        embeddings = state.get("token_embeddings") or [state["token_embedding"]]  # one, before SDXL
        if len(embeddings) != len(self.concept.token_embeddings):
            raise TrainingError(
                f"{path}: a checkpoint for a pipeline with {len(embeddings)} text encoders, "
                f"this one has {len(self.concept.token_embeddings)}"
            )
        with torch.no_grad():
            for vector, saved in zip(self.concept.token_embeddings, embeddings):
                vector.copy_(saved)
            self.values.load_state(state.get("values") or state["value_targets"])  # value_targets: free, older runs
            self.concept.value_targets = self.values.targets()
        self.concept.concept_encoding = state["concept_encoding"].to(self.device)
        self.concept.supercategory_encoding = state["supercategory_encoding"].to(self.device)
        self.generator.set_state(state["generator"])
        self.losses = list(state["losses"])
        self.start_step = state["step"]
        return state

    # -- the whole run --------------------------------------------------------------------------
    def run(
        self,
        checkpoint: Path | None = None,
        resume: bool = False,
        captions=None,
        progress: bool = True,
        callback: Callable[[int, int, float], None] | None = None,
    ):
        """Train; ``callback(step, steps, loss)`` after each optimizer step (after its checkpoint; an exception it
        raises stops the run, the pipeline restored)."""
        started = time.perf_counter()
        if resume and checkpoint is None:
            raise TrainingError("resuming needs a checkpoint path")
        installed = False
        try:
            state = self.load_checkpoint(checkpoint) if resume else None
            self.install(captions, progress=progress)
            installed = True
            if state is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            loss_before = self.held_out_loss()
            bar = tqdm(
                range(self.start_step, self.config.steps),
                desc=f"training {self.token}",
                disable=not progress,
                initial=self.start_step,
                total=self.config.steps,
            )
            for step in bar:
                self.losses.append(self.step())
                if progress:  # the drift is shown, not used: not worked out per step when nothing shows it
                    ratio, cosine = self.value_drift()
                    bar.set_postfix(loss=f"{self.losses[-1]:.4f}", value=f"{ratio:.2f}x cos {cosine:.2f}")
                done = step + 1
                if checkpoint is not None and done % self.config.checkpoint_every == 0 and done < self.config.steps:
                    self.save_checkpoint(checkpoint, done)
                if callback is not None:
                    callback(done, self.config.steps, self.losses[-1])
            loss_after = self.held_out_loss()
            with torch.no_grad():
                self.refresh_values()  # o*_V of the last step, without its graph
            drift = self.value_drift()
        finally:
            if installed:
                self.uninstall()
            self.restore_pipeline()
        seconds = self.prepare_seconds + time.perf_counter() - started  # the set-up's latents included
        return TrainingResult(self.finished_concept(), self.losses, seconds, (loss_before, loss_after), drift)

    @torch.no_grad()
    def value_drift(self) -> tuple[float, float]:
        """(mean |o*_V| / |W_V i*_super|, mean cosine of the two) over the cross-attention layers."""
        ratios, cosines = [], []
        for name, start in self.value_start.items():
            value = self.concept.value_targets[name].detach().float()
            ratios.append((value.norm() / start.float().norm()).item())
            cosines.append(torch.nn.functional.cosine_similarity(value, start.float(), dim=0).item())
        return sum(ratios) / len(ratios), sum(cosines) / len(cosines)

    def finished_concept(self) -> Concept:
        concept = self.concept
        settings = asdict(self.config)
        settings.update(
            covariance_corpus=self.corpus,
            images=len(self.images),
            resolution=self.resolution,
            mask=self.bank.mask_source,
            paired=self.pair_bank is not None,
            final_loss=self.losses[-1] if self.losses else None,
        )
        return replace(
            concept.copy(device="cpu", dtype=torch.float32),
            beta=self.config.beta,
            tau=self.config.tau,
            training=settings,
        )


def train_concept(
    pipe,
    images: list[TrainingImage],
    token: str,
    supercategory: str,
    config: TrainingConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    captions: list[str] | None = None,
    progress: bool = True,
    callback: Callable[[int, int, float], None] | None = None,
) -> TrainingResult:
    """Train ``token`` (e.g. "<mycat>") from images of one thing; the pipeline is left as it was.
    ``callback(step, steps, loss)`` is called after each optimizer step; an exception it raises stops training."""
    trainer = ConceptTrainer(pipe, images, token, supercategory, config or TrainingConfig())
    return trainer.run(Path(checkpoint) if checkpoint else None, resume, captions, progress, callback)
