"""Train the embedded base model in stages, resumably, on a CPU:

    python -m perfusion.world.basemodel.train_base --stage tokenizer
    python -m perfusion.world.basemodel.train_base --stage vae --resume --max-minutes 30
    python -m perfusion.world.basemodel.train_base --stage latents          # cache the latent pool (once per autoencoder)
    python -m perfusion.world.basemodel.train_base --stage unet --resume    # hours; stop any time, --resume continues
    python -m perfusion.world.basemodel.train_base --stage decoder --resume # optional: sharpen the decoder, any time

Run with OMP_WAIT_POLICY=PASSIVE when the CPU is shared: spinning OpenMP threads halve throughput under contention.

Everything lives in --run-dir (default checkpoints/basemodel): tokenizer/, vae.ckpt and vae/ (the finished
autoencoder with its latent scaling factor), latents/, unet.ckpt, log.jsonl. Checkpoints hold optimizer, EMA,
step and RNG state and are written atomically every few minutes and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr
from transformers import CLIPTextModel, CLIPTokenizer

from perfusion.training.latents import prediction_target

from . import model as models
from .attributes import AttributeSupervision
from .config import (
    DEFAULT_RUN_DIR,
    ArchitectureConfig,
    TokenizerConfig,
    UnetTrainingConfig,
    VaeTrainingConfig,
    from_dict,
    saved_architecture,
    to_dict,
)
from .data import (
    VAE_SEED_RANGE,
    LatentPool,
    SceneSource,
    atomic_torch_save,
    families_source,
    render_batch,
    render_masked_batch,
    world_source,
)
from .evaluate import EvaluationConfig, evaluate
from .export import INFO_FILE
from .grounding import (
    AttentionRecorder,
    CaptionGrounding,
    attention_resolutions,
    token_grounding_loss,
    token_pixel_loss,
)
from .model import pipeline_from_checkpoint
from .readout import AttentionReadout
from .tokenizer import build_tokenizer, words_split

TOKENIZER_CAPTIONS = 5000  # captions added to the BPE corpus
SCALING_SAMPLES = 512  # scenes whose latent std sets the scaling factor
SCALING_FIRST_SEED = 50_000_000


class RunLog:
    """Append-only JSON-lines log plus a terse line on stdout."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "log.jsonl"

    def __call__(self, message: str | None = None, **record):
        if record:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"time": time.time(), **record}) + "\n")
        text = message or " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        print(text, flush=True)


class StopFlag:
    """Set by SIGTERM/SIGINT or a time limit: the loop saves a checkpoint and returns."""

    def __init__(self, max_minutes: float | None):
        self.deadline = time.time() + max_minutes * 60 if max_minutes else math.inf
        self.signalled = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.signalled = True

    def __bool__(self) -> bool:
        return self.signalled or time.time() > self.deadline


def learning_rate_factor(
    step: int, warmup: int, horizon: int, floor: float, decay_from: int = 0, warmup_from: int = 0
) -> float:
    """Linear warm-up over `warmup` steps from `warmup_from` (a run restarted from weights alone warms its fresh Adam
    up again), flat until `decay_from` (if later), then cosine decay to `floor` at `horizon` (flat after)."""
    ramp = min(1.0, (step - warmup_from + 1) / warmup) if warmup else 1.0
    start = max(warmup, decay_from)
    progress = min(1.0, max(0, step - start) / max(1, horizon - start))
    return ramp * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def rng_state(generator: torch.Generator, py_rng: random.Random) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(), "python": py_rng.getstate()}


def restore_rng_state(state: dict, generator: torch.Generator, py_rng: random.Random) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    py_rng.setstate(state["python"])


# ---- stage: tokenizer


def train_tokenizer(run_dir: Path, source: SceneSource, config: TokenizerConfig, log, force: bool = False):
    directory = run_dir / "tokenizer"
    saved = any((directory / name).exists() for name in ("vocab.json", "tokenizer.json"))  # ours, or a shipped one
    if saved and not force:
        log(f"tokenizer exists at {directory} (use --force to rebuild)")
        return CLIPTokenizer.from_pretrained(directory)
    rng = random.Random(0)
    captions = [source.make_scene(seed).caption for seed in range(SCALING_FIRST_SEED, SCALING_FIRST_SEED + 500)]
    specs = [source.make_scene(seed).spec for seed in range(SCALING_FIRST_SEED, SCALING_FIRST_SEED + 100)]
    captions += [source.caption(specs[i % len(specs)], rng) for i in range(TOKENIZER_CAPTIONS)]
    words = list(source.vocabulary())
    tokenizer = build_tokenizer(directory, words, captions, config)
    split = words_split(tokenizer, words)
    log(f"tokenizer: {len(tokenizer)} tokens; world words split into pieces: {split or 'none'}")
    return tokenizer


# ---- stage: vae


def random_crops(images: torch.Tensor, size: int, rng: random.Random, align: int = 4) -> torch.Tensor:
    """One random size x size crop per image (all its channels: an appended mask is cropped with it), at offsets
    on the latent grid (multiples of `align`)."""
    if not size or size >= images.shape[-1]:
        return images
    offsets = range(0, images.shape[-1] - size + 1, align)
    crops = []
    for image in images:
        top, left = rng.choice(offsets), rng.choice(offsets)
        crops.append(image[:, top : top + size, left : left + size])
    return torch.stack(crops)


def vae_loss(
    vae: AutoencoderKL,
    images: torch.Tensor,
    config: VaeTrainingConfig,
    decoder_only: bool = False,
    masks: torch.Tensor | None = None,
    anchor: tuple[AutoencoderKL, float] | None = None,
):
    """L1 + L1 on image gradients (keeps outlines sharp) + a small KL, as SD's autoencoder minus the GAN. With
    `decoder_only` the frozen encoder's mean latent is decoded (what the diffusion model produces). With `masks`
    (N x 1 x H x W in [0, 1]) an object's pixels weigh 1 + `config.object_weight`; with `anchor` (a frozen
    autoencoder and its scaling factor) the mean latent is held near that autoencoder's, in scaled units."""
    if decoder_only:
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
        latents = posterior.mean
    else:
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample()
    reconstruction = vae.decode(latents).sample
    weights = torch.ones_like(images[:, :1]) if masks is None else 1.0 + config.object_weight * masks

    def weighted_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # sum_i w_i |a_i - b_i| / sum_i w_i, over pixels and channels
        return ((a - b).abs() * w).sum() / (w.sum() * a.shape[1])

    l1 = weighted_l1(reconstruction, images, weights)
    # an outline pixel pair weighs as its heavier pixel, so that every side of an object's outline counts as the object
    rows = torch.maximum(weights[:, :, 1:], weights[:, :, :-1])
    columns = torch.maximum(weights[:, :, :, 1:], weights[:, :, :, :-1])
    edge = weighted_l1(reconstruction.diff(dim=2), images.diff(dim=2), rows) + weighted_l1(
        reconstruction.diff(dim=3), images.diff(dim=3), columns
    )
    kl = posterior.kl().mean()
    loss = l1 + config.edge_weight * edge + (0.0 if decoder_only else config.kl_weight * kl)
    parts = {"l1": l1.item(), "edge": edge.item(), "kl": kl.item(), "mse": F.mse_loss(reconstruction, images).item()}
    if masks is not None:
        parts["object_l1"] = ((reconstruction - images).abs() * masks).sum().item() / max(
            masks.sum().item() * images.shape[1], 1.0
        )
    if anchor is not None and not decoder_only:
        anchor_vae, factor = anchor
        with torch.no_grad():
            target = anchor_vae.encode(images).latent_dist.mean
        drift = F.mse_loss(posterior.mean * factor, target * factor)
        loss = loss + config.anchor_weight * drift
        parts["anchor"] = drift.item()
    return loss, parts


@torch.no_grad()
def scaling_factor(vae: AutoencoderKL, source: SceneSource) -> float:
    """1 / std of latents over fixed scenes, so the diffusion model sees unit-variance latents (SD's 0.18215)."""
    seeds = range(SCALING_FIRST_SEED, SCALING_FIRST_SEED + SCALING_SAMPLES)
    latents = torch.cat(
        [vae.encode(render_batch(source, seeds[i : i + 64])).latent_dist.mean for i in range(0, len(seeds), 64)]
    )
    return float(1.0 / latents.std())


def export_vae(vae: AutoencoderKL, source: SceneSource, directory: Path, factor: float | None = None) -> float:
    """Write the diffusers VAE folder; the scaling factor is measured unless given (a fine-tuned decoder keeps it)."""
    factor = scaling_factor(vae, source) if factor is None else factor
    exported = copy.deepcopy(vae)
    exported.register_to_config(scaling_factor=factor)
    exported.save_pretrained(directory, safe_serialization=True)
    return factor


def train_vae(
    run_dir: Path,
    source: SceneSource,
    arch: ArchitectureConfig,
    config: VaeTrainingConfig,
    resume: bool,
    stop,
    log,
    decoder_only: bool = False,
    warm_start: Path | None = None,
):
    """Stage 1 (encoder and decoder), or with `decoder_only` a later fine-tuning of the decoder alone, which keeps
    the latent space, hence the latent pool and the UNet, valid."""
    name = "decoder" if decoder_only else "vae"
    checkpoint_path = run_dir / f"{name}.ckpt"
    if not decoder_only and not checkpoint_path.exists() and (run_dir / "vae").exists() and warm_start is None:
        # taken from a shipped folder (--init-from): a new autoencoder would void the latent pool and the UNet
        log(f"vae: {run_dir / 'vae'} has no checkpoint (taken from a shipped folder); kept, not trained again")
        return
    if decoder_only:
        vae = load_exported_vae(run_dir)
        factor = vae.config.scaling_factor
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    else:
        vae, factor = models.build_vae(arch), None
        if warm_start is not None and not (
            resume and checkpoint_path.exists()
        ):  # a new world, an old autoencoder's start
            vae.load_state_dict(AutoencoderKL.from_pretrained(Path(warm_start) / "vae").float().state_dict())
            log(f"vae: starting from {warm_start}")
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0)
    generator, py_rng, step = torch.Generator().manual_seed(0), random.Random(0), 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], generator, py_rng)
        step = state["step"]
        log(f"{name}: resumed at step {step}")
        if step >= config.max_steps:  # finished: re-exporting would overwrite a decoder fine-tuned since
            log(f"{name}: already trained ({step} steps)")
            return
    anchor = None
    if config.anchor_weight and not decoder_only:
        if warm_start is None:
            raise ValueError("--anchor-weight holds the latents near a starting autoencoder: give it with --warm-start")
        anchor_vae = AutoencoderKL.from_pretrained(Path(warm_start) / "vae").float().eval().requires_grad_(False)
        factor = anchor_vae.config.scaling_factor  # the anchored latent space keeps its scale, hence the UNet
        anchor = (anchor_vae, factor)
    log(
        f"{name}: {models.parameter_count(vae) / 1e6:.2f}M parameters, {sum(p.numel() for p in trained) / 1e6:.2f}M trained"
    )

    def save():
        state = {
            "vae": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(generator, py_rng),
            "step": step,
            "arch": to_dict(arch),
            "config": to_dict(config),
        }
        atomic_torch_save(state, checkpoint_path)
        vae.eval()
        written = export_vae(vae, source, run_dir / "vae", factor)
        vae.train()
        log(f"{name}: checkpoint at step {step}, scaling factor {written:.4f}")

    vae.train()
    last_save, window, started = time.time(), [], time.time()
    while step < config.max_steps and not stop:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * learning_rate_factor(step, config.warmup_steps, config.max_steps, 0.1)
        seeds = [py_rng.randint(*VAE_SEED_RANGE) for _ in range(config.batch_size)]
        if config.object_weight:
            images, masks = render_masked_batch(source, seeds)
            images, masks = random_crops(torch.cat([images, masks], 1), config.crop_size, py_rng).split([3, 1], 1)
        else:
            images, masks = random_crops(render_batch(source, seeds), config.crop_size, py_rng), None
        loss, parts = vae_loss(vae, images, config, decoder_only, masks, anchor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        step += 1
        window.append(parts)
        if step % config.log_every == 0:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            log(stage=name, step=step, **mean, images_per_s=len(window) * config.batch_size / (time.time() - started))
            window, started = [], time.time()
        if time.time() - last_save > config.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    save()


# ---- stage: latents


def load_exported_vae(run_dir: Path) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(run_dir / "vae").eval()


def vae_fingerprint(run_dir: Path) -> str:
    """Identifies the latent space: the encoder's weights and the scaling factor. The decoder may be fine-tuned
    later without invalidating the cached latents or the UNet."""
    vae = load_exported_vae(run_dir)
    digest = hashlib.sha256(repr(vae.config.scaling_factor).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def fill_latent_pool(run_dir: Path, source: SceneSource, config: UnetTrainingConfig, log):
    vae = load_exported_vae(run_dir)
    pool = LatentPool(run_dir / "latents", vae_fingerprint(run_dir))
    pool.fill(source, vae, vae.config.scaling_factor, config.pool_size, log=log)
    return pool


# ---- stage: unet


def moving_average(module: torch.nn.Module, decay: float) -> EMAModel:
    """diffusers' EMA of a module's parameters; after n updates the decay is min(decay, (1 + n) / (10 + n)), so early
    averages are not stale (update_after_step=-1: the first update averages, where EMAModel's default copies)."""
    return EMAModel(module.parameters(), decay=decay, update_after_step=-1)


def averaged_weights(average: EMAModel, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An EMA's weights by parameter name, as checkpoints hold them ("ema_unet", "ema_text")."""
    return {name: shadow for (name, _), shadow in zip(module.named_parameters(), average.shadow_params)}


def restore_average(average: EMAModel, module: torch.nn.Module, weights: dict[str, torch.Tensor], updates: int) -> None:
    """The inverse of averaged_weights, with the number of updates since the EMA started (which sets the decay)."""
    average.shadow_params = [weights[name] for name, _ in module.named_parameters()]
    average.optimization_step = updates


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) from the noise scheduler's SNR (diffusers' compute_snr).
    Epsilon: min(SNR, gamma) / SNR, i.e. min(SNR, gamma) on the x0 error. v: min(SNR + 1, gamma) / (SNR + 1), so the
    noisiest steps, where the layout is decided, keep weight 1 on the x0 error (min(SNR, gamma) / (SNR + 1) would give
    the zero-SNR step no weight at all)."""
    snr = compute_snr(scheduler, timesteps)
    if prediction_type == "v_prediction":
        snr = snr + 1
    return torch.clamp(snr, max=gamma) / snr


def sample_timesteps(
    count: int, total: int, generator: torch.Generator, high_fraction: float, high_from: int
) -> torch.Tensor:
    """Uniform timesteps, except that a `high_fraction` of them are drawn from [high_from, total) only."""
    timesteps = torch.randint(total, (count,), generator=generator)
    if high_fraction > 0:
        high = torch.rand(count, generator=generator) < high_fraction
        timesteps[high] = torch.randint(high_from, total, (int(high.sum()),), generator=generator)
    return timesteps


def two_object_indices(specs: list) -> torch.Tensor:
    """Positions of the pool's two-object scenes."""
    return torch.tensor([i for i, spec in enumerate(specs) if spec.second_object is not None], dtype=torch.long)


class UnetTrainer:
    """UNet and text encoder trained jointly on the latent pool; the EMA copies are what gets shipped."""

    def __init__(
        self,
        run_dir: Path,
        source: SceneSource,
        arch: ArchitectureConfig,
        config: UnetTrainingConfig,
        log,
        device: str | torch.device = "cpu",
    ):
        self.run_dir, self.source, self.arch, self.config, self.log = run_dir, source, arch, config, log
        self.device = torch.device(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
        self.unet = models.build_unet(arch).to(self.device)
        self.text_encoder = models.build_text_encoder(arch, self.tokenizer).to(self.device)
        self.scheduler = models.build_training_scheduler(arch)
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": self.unet.parameters(),
                    "lr": config.unet_learning_rate,
                    "base_lr": config.unet_learning_rate,
                },
                {
                    "params": self.text_encoder.parameters(),
                    "lr": config.text_learning_rate,
                    "base_lr": config.text_learning_rate,
                },
            ],
            weight_decay=config.weight_decay,
        )
        self.ema_unet = moving_average(self.unet, config.ema_decay)
        self.ema_text = moving_average(self.text_encoder, config.ema_decay)
        self.generator, self.py_rng, self.step = torch.Generator().manual_seed(0), random.Random(0), 0
        self.ema_start = 0  # the step the EMA last started from a copy of the weights
        self.warmup_from = 0  # the step the learning rate last warmed up from (a restart from weights alone)
        self.checkpoint_path = run_dir / "unet.ckpt"
        self.grounding = (
            CaptionGrounding(self.tokenizer) if config.grounding_weight or config.grounding_pixel_weight else None
        )
        self.attention = AttentionRecorder(self.unet) if self.grounding or config.readout_weight else None
        self.attention_resolutions = attention_resolutions(self.unet)
        self.attributes = None
        if config.attribute_weight:  # its heads have their own optimizer, so that older checkpoints still resume
            self.attributes = AttributeSupervision(self.tokenizer, arch.text_hidden_size).to(self.device)
            self.attribute_optimizer = torch.optim.AdamW(self.attributes.parameters(), lr=config.text_learning_rate)
        self.readout = None
        if config.readout_weight:  # as the attribute heads: its own optimizer and checkpoint keys
            self.readout = AttentionReadout(self.tokenizer, arch.text_hidden_size).to(self.device)
            self.readout_optimizer = torch.optim.AdamW(self.readout.parameters(), lr=config.text_learning_rate)

    def state(self) -> dict:
        return {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": averaged_weights(self.ema_unet, self.unet),
            "ema_text": averaged_weights(self.ema_text, self.text_encoder),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.generator, self.py_rng),
            "step": self.step,
            "ema_start": self.ema_start,
            "warmup_from": self.warmup_from,
            "arch": to_dict(self.arch),
            "config": to_dict(self.config),
            "vae": vae_fingerprint(self.run_dir),
            **(
                {
                    "attribute_heads": self.attributes.state_dict(),
                    "attribute_optimizer": self.attribute_optimizer.state_dict(),
                }
                if self.attributes is not None
                else {}
            ),
            **(
                {"readout_heads": self.readout.state_dict(), "readout_optimizer": self.readout_optimizer.state_dict()}
                if self.readout is not None
                else {}
            ),
        }

    def load(self, state: dict) -> None:
        """A checkpoint's state (read to the CPU: a GPU run's checkpoint resumes on a CPU and back)."""
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.attributes is not None and "attribute_heads" in state:  # else the heads start afresh
            missing, unexpected = self.attributes.load_state_dict(state["attribute_heads"], strict=False)
            if missing or unexpected:  # a head added (the shape words') or removed since: its optimizer starts afresh
                changed = ", ".join([*missing, *unexpected])
                self.log(f"unet: attribute heads changed since this checkpoint ({changed}); their optimizer restarts")
            else:
                self.attribute_optimizer.load_state_dict(state["attribute_optimizer"])
        if self.readout is not None and "readout_heads" in state:
            self.readout.load_state_dict(state["readout_heads"])
            self.readout_optimizer.load_state_dict(state["readout_optimizer"])
        unet_group, text_group = self.optimizer.param_groups  # a resumed run takes the current config's rates
        unet_group["base_lr"], text_group["base_lr"] = self.config.unet_learning_rate, self.config.text_learning_rate
        restore_rng_state(state["rng"], self.generator, self.py_rng)
        self.step, self.ema_start = state["step"], state.get("ema_start", 0)
        self.warmup_from = state.get("warmup_from", 0)
        ema_unet = {name: weight.to(self.device) for name, weight in state["ema_unet"].items()}
        ema_text = {name: weight.to(self.device) for name, weight in state["ema_text"].items()}
        restore_average(self.ema_unet, self.unet, ema_unet, self.step - self.ema_start)
        restore_average(self.ema_text, self.text_encoder, ema_text, self.step - self.ema_start)
        saved = saved_architecture(state["arch"])
        if (saved.prediction_type, saved.zero_terminal_snr) != (self.arch.prediction_type, self.arch.zero_terminal_snr):
            self.restart_ema()  # an average over both parameterisations would predict neither
            self.log(
                f"unet: from step {self.step} trained as {self.arch.prediction_type}, zero terminal SNR "
                f"{self.arch.zero_terminal_snr} (was {saved.prediction_type}, {saved.zero_terminal_snr}); EMA restarted"
            )

    def head_optimizers(self) -> list:
        """The optimizers of the auxiliary heads (attribute supervision, attention readout) that are in use."""
        heads = []
        if self.attributes is not None:
            heads.append(self.attribute_optimizer)
        if self.readout is not None:
            heads.append(self.readout_optimizer)
        return heads

    def restart_ema(self) -> None:
        self.ema_unet = moving_average(self.unet, self.config.ema_decay)
        self.ema_text = moving_average(self.text_encoder, self.config.ema_decay)
        self.ema_start = self.step

    def initialise_from(self, model_dir: Path) -> None:
        """Start from a shipped pipeline folder's (EMA) weights when the full checkpoint is gone: the weights and
        the step count carry on, the optimizer state starts afresh, and the learning rate warms up again over
        warmup_steps while Adam's moments rebuild."""
        model_dir = Path(model_dir)
        self.unet.load_state_dict(UNet2DConditionModel.from_pretrained(model_dir / "unet").float().state_dict())
        self.text_encoder.load_state_dict(
            CLIPTextModel.from_pretrained(model_dir / "text_encoder").float().state_dict()
        )
        self.step = shipped_info(model_dir).get("unet_step", 0)
        self.warmup_from = self.step
        self.restart_ema()
        self.log(f"unet: initialised from {model_dir} at step {self.step}")

    def warm_start(self, model_dir: Path) -> None:
        """Start a new world's run from another pipeline folder's weights: the UNet whole, the text encoder with
        each token's embedding row taken where the other tokenizer has the same token (new tokens keep their random
        start). The step count starts at 0."""
        model_dir = Path(model_dir)
        self.unet.load_state_dict(UNet2DConditionModel.from_pretrained(model_dir / "unet").float().state_dict())
        other = CLIPTextModel.from_pretrained(model_dir / "text_encoder").float().state_dict()
        other_vocab = CLIPTokenizer.from_pretrained(model_dir / "tokenizer").get_vocab()
        key = (
            "text_model.embeddings.token_embedding.weight"
            if "text_model.embeddings.token_embedding.weight" in other
            else None
        )
        key = key or next(name for name in other if name.endswith("token_embedding.weight"))
        rows = self.text_encoder.state_dict()[key].clone()
        shared = [
            (index, other_vocab[token]) for token, index in self.tokenizer.get_vocab().items() if token in other_vocab
        ]
        for index, other_index in shared:
            rows[index] = other[key][other_index]
        other[key] = rows
        self.text_encoder.load_state_dict(other)
        self.restart_ema()
        self.log(f"unet: warm start from {model_dir}: {len(shared)} of {len(self.tokenizer)} token rows shared")

    def save(self) -> None:
        atomic_torch_save(self.state(), self.checkpoint_path)
        self.log(f"unet: checkpoint at step {self.step}")

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def batch(self, latents: torch.Tensor, specs: list, two_objects: torch.Tensor | None = None):
        """A training batch (latents, captions, specs); ``two_objects``: two_object_indices(specs), if listed already."""
        count = self.config.batch_size
        indices = torch.randint(len(specs), (count,), generator=self.generator)
        paired = round(self.config.two_object_share * count)
        if paired:  # that many from the two-object scenes, the rest from the whole pool
            two_objects = two_object_indices(specs) if two_objects is None else two_objects
            indices[:paired] = two_objects[torch.randint(len(two_objects), (paired,), generator=self.generator)]
        captions = [
            "" if self.py_rng.random() < self.config.caption_dropout else self.source.caption(specs[i], self.py_rng)
            for i in indices.tolist()
        ]
        return latents[indices].float(), captions, [specs[i] for i in indices.tolist()]

    def training_step(self, latents: torch.Tensor, captions: list[str], specs: list | None = None) -> dict[str, float]:
        config = self.config
        noise = torch.randn(latents.shape, generator=self.generator)
        timesteps = sample_timesteps(
            len(latents),
            self.scheduler.config.num_train_timesteps,
            self.generator,
            config.high_noise_fraction,
            config.high_noise_from,
        )
        latents, noise, timesteps = latents.to(self.device), noise.to(self.device), timesteps.to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        prediction_type = self.scheduler.config.prediction_type
        target = prediction_target(self.scheduler, latents, noise, timesteps)
        recording = self.attention.recording() if self.attention is not None else contextlib.nullcontext()
        bf16 = config.mixed_precision == "bf16"
        with recording, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            states = self.encode_captions(captions)
            prediction = self.unet(noisy, timesteps, states).sample.float()
        weights = min_snr_weights(self.scheduler, timesteps, config.min_snr_gamma, prediction_type)
        diffusion = (weights * (prediction - target).pow(2).mean(dim=(1, 2, 3))).mean()
        losses = {"loss": diffusion}
        if self.grounding:
            targets = self.grounding.targets(specs, captions, self.attention_resolutions)
            losses["grounding"] = token_grounding_loss(self.attention.maps, targets)
            chosen = config.grounding_pixel_tokens
            pixel_targets = targets.only_nouns() if chosen == "nouns" else targets
            losses["pixel"] = token_pixel_loss(self.attention.maps, pixel_targets, together=chosen == "together")
        if self.attributes is not None:
            losses["attributes"] = self.attributes.loss(states, specs, captions)
        if self.readout is not None:
            losses["readout"] = self.readout.loss(self.attention.maps, states, specs, captions)
        loss = (
            diffusion
            + config.grounding_weight * losses.get("grounding", 0.0)
            + config.grounding_pixel_weight * losses.get("pixel", 0.0)
            + config.attribute_weight * losses.get("attributes", 0.0)
            + config.readout_weight * losses.get("readout", 0.0)
        )
        self.optimizer.zero_grad(set_to_none=True)
        for optimizer in self.head_optimizers():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.text_encoder.parameters()), 1.0)
        factor = learning_rate_factor(
            self.step,
            config.warmup_steps,
            config.max_steps,
            config.min_learning_rate_ratio,
            config.decay_from,
            self.warmup_from,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.optimizer.step()
        for optimizer in self.head_optimizers():
            optimizer.step()
        self.step += 1
        self.ema_unet.step(self.unet.parameters())  # the EMA's own count of updates is self.step - self.ema_start
        self.ema_text.step(self.text_encoder.parameters())
        return {name: value.item() for name, value in losses.items()}

    def run(
        self,
        resume: bool,
        stop,
        on_eval=None,
        init_from: Path | None = None,
        warm_start: Path | None = None,
        adopt_autoencoder: bool = False,
    ) -> None:
        """Train to max_steps or until ``stop``. ``adopt_autoencoder``: a resumed UNet goes on in the latent space of
        the run's current autoencoder (one retrained with --anchor-weight, near the old latents), not refused."""
        if resume and self.checkpoint_path.exists():
            state = torch.load(self.checkpoint_path, weights_only=False, map_location="cpu")
            if state["vae"] != vae_fingerprint(self.run_dir):
                if not adopt_autoencoder:
                    raise ValueError(
                        "unet.ckpt was trained on another autoencoder's latents (--adopt-autoencoder goes on in the "
                        "new one's, for an autoencoder retrained with --anchor-weight)"
                    )
                self.log(
                    f"unet: going on in a new autoencoder's latents ({state['vae']} -> {vae_fingerprint(self.run_dir)})"
                )
            self.load(state)
            self.log(f"unet: resumed at step {self.step}")
        elif init_from is not None:
            self.initialise_from(init_from)
        elif warm_start is not None:
            self.warm_start(warm_start)
        if self.step >= self.config.max_steps:
            self.log(
                f"unet: step {self.step} has reached max_steps {self.config.max_steps}, the end of the learning-rate "
                "decay; pass a larger --max-steps (and --decay-from) to go on"
            )
            return
        pool = LatentPool(self.run_dir / "latents", vae_fingerprint(self.run_dir))
        latents, specs = pool.load()
        chunks = len(specs) // pool.chunk_size
        self.log(
            f"unet: {models.parameter_count(self.unet) / 1e6:.2f}M, text encoder "
            f"{models.parameter_count(self.text_encoder) / 1e6:.2f}M parameters; pool of {len(specs)} scenes"
        )
        self.unet.train()
        self.text_encoder.train()
        last_save, losses, started = time.time(), [], time.time()
        two_objects = two_object_indices(specs) if self.config.two_object_share else None  # once, not every step
        while not stop and self.step < self.config.max_steps:
            losses.append(self.training_step(*self.batch(latents, specs, two_objects)))
            if self.step % self.config.log_every == 0:
                means = {name: float(np.mean([step[name] for step in losses])) for name in losses[0]}
                self.log(
                    stage="unet",
                    step=self.step,
                    **means,
                    lr=self.optimizer.param_groups[0]["lr"],
                    samples_per_s=len(losses) * self.config.batch_size / (time.time() - started),
                )
                losses, started = [], time.time()
            if time.time() - last_save > self.config.checkpoint_minutes * 60:
                self.save()
                last_save = time.time()
                if pool.chunks_done() > chunks:  # the pool may be filled by another process while training runs
                    latents, specs = pool.load()
                    chunks = len(specs) // pool.chunk_size
                    self.log(f"unet: pool grown to {len(specs)} scenes")
            if on_eval and self.step % self.config.eval_every == 0:
                on_eval(self)
        self.save()


def judge_scores(trainer: UnetTrainer, prompts: int = 32) -> None:
    """Log the judge's scores of the EMA weights on a fixed prompt set (skipped until the judge exists)."""
    from perfusion.world.judge import JUDGE_PATH

    if not JUDGE_PATH.exists():
        return
    trainer.save()
    pipe, _ = pipeline_from_checkpoint(trainer.run_dir)
    results = evaluate(pipe, EvaluationConfig(prompts=prompts, seeds=1))["results"]
    trainer.log(stage="eval", step=trainer.step, **results)


def adopt_shipped_parts(model_dir: Path, run_dir: Path, log) -> None:
    """Copy a shipped pipeline's tokenizer and autoencoder into an empty run directory, so that the latent pool
    and the UNet stage continue in the shipped model's own latent space."""
    for part in ("tokenizer", "vae"):
        if not (run_dir / part).exists():
            shutil.copytree(Path(model_dir) / part, run_dir / part)
            log(f"{part}: taken from {model_dir}")


# ---- command line


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per scalar field of a config dataclass (default None: keep the saved or default value); a name
    shared by two stages' configs (--batch-size) is one option that sets it for the stage being run."""
    taken = {action.dest for action in parser._actions}
    for field in dataclasses.fields(cls):
        if field.name not in taken and field.type in ("int", "float", "str", int, float, str):
            kind = {"int": int, "float": float, "str": str}.get(field.type, field.type)
            parser.add_argument(
                "--" + field.name.replace("_", "-"), type=kind, default=None, help=f"{cls.__name__}.{field.name}"
            )


def config_from_arguments(cls, arguments: argparse.Namespace, saved: dict | None = None):
    config = from_dict(cls, saved) if saved else cls()
    overrides = {
        f.name: getattr(arguments, f.name)
        for f in dataclasses.fields(cls)
        if getattr(arguments, f.name, None) is not None
    }
    return dataclasses.replace(config, **overrides)


def shipped_info(model_dir: Path) -> dict:
    """What a pipeline folder was exported with (its basemodel.json: unet_step, arch, config); {} without one."""
    path = Path(model_dir) / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def saved_config(path: Path, key: str) -> dict | None:
    return torch.load(path, weights_only=False, map_location="cpu")[key] if path.exists() else None


def scene_source(families: bool, config: UnetTrainingConfig | None = None) -> SceneSource:
    """The world's training scenes; with the unet stage's config, captions name words at its rates."""
    if config is None:
        return families_source() if families else world_source()
    if families:
        return families_source(config.pattern_word, config.shape_word)
    return world_source(config.state_position, config.category_word)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=["tokenizer", "vae", "latents", "unet", "decoder"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--force", action="store_true", help="tokenizer: rebuild even if it exists")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="take the tokenizer and autoencoder of a shipped pipeline folder where the run directory lacks "
        "them, and (unet stage) its weights when there is no checkpoint, e.g. after losing checkpoints/",
    )
    parser.add_argument(
        "--v-prediction",
        action="store_true",
        help="unet stage: go on training a resumed epsilon model as v-prediction on the zero-terminal-SNR "
        "schedule (new runs start so); the EMA restarts at the switch",
    )
    parser.add_argument(
        "--world",
        choices=["families", "emoji"],
        default="families",
        help="which world's scenes to train on (default: the families world)",
    )
    parser.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="vae and unet stages of a new run: start from a pipeline folder's weights (the autoencoder "
        "whole; the UNet whole and the text encoder's rows for the tokens both tokenizers share)",
    )
    parser.add_argument(
        "--adopt-autoencoder",
        action="store_true",
        help="unet stage: resume on the run's new autoencoder (retrained with --anchor-weight; its latent pool "
        "rebuilt with --stage latents) instead of refusing",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="unet stage: where the UNet and text encoder train (cuda where a GPU is at hand; with "
        "--mixed-precision bf16 and a larger --batch-size); checkpoints resume on any device",
    )
    add_config_arguments(parser, VaeTrainingConfig)
    add_config_arguments(parser, UnetTrainingConfig)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    run_dir = arguments.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    families = arguments.world == "families"
    log, stop = RunLog(run_dir), StopFlag(arguments.max_minutes)
    if arguments.init_from is not None:
        adopt_shipped_parts(arguments.init_from, run_dir, log)
    if arguments.stage == "tokenizer":
        train_tokenizer(run_dir, scene_source(families), TokenizerConfig(), log, force=arguments.force)
    elif arguments.stage in ("vae", "decoder"):
        checkpoint = run_dir / f"{arguments.stage}.ckpt"
        saved = saved_config(checkpoint, "config") if arguments.resume else None
        continuing = arguments.resume or arguments.stage == "decoder"  # the decoder stage keeps stage 1's network
        saved_arch = continuing and saved_config(run_dir / "vae.ckpt", "arch")
        arch = saved_architecture(saved_arch) if saved_arch else ArchitectureConfig()
        config = config_from_arguments(VaeTrainingConfig, arguments, saved)
        train_vae(
            run_dir,
            scene_source(families),
            arch,
            config,
            arguments.resume,
            stop,
            log,
            decoder_only=arguments.stage == "decoder",
            warm_start=arguments.warm_start,
        )
    elif arguments.stage == "latents":
        fill_latent_pool(run_dir, scene_source(families), config_from_arguments(UnetTrainingConfig, arguments), log)
    else:
        checkpoint = run_dir / "unet.ckpt"
        saved = saved_config(checkpoint, "config") if arguments.resume else None
        if saved is None and arguments.init_from is not None and not checkpoint.exists():
            saved = shipped_info(arguments.init_from).get("config")  # the committed weights' schedule
        if arguments.resume and checkpoint.exists():
            arch = saved_architecture(saved_config(checkpoint, "arch"))
        elif arguments.init_from is not None:
            arch = saved_architecture(shipped_info(arguments.init_from)["arch"])
        else:
            arch = ArchitectureConfig()
        if arguments.v_prediction:
            arch = dataclasses.replace(arch, prediction_type="v_prediction", zero_terminal_snr=True)
        config = config_from_arguments(UnetTrainingConfig, arguments, saved)
        trainer = UnetTrainer(run_dir, scene_source(families, config), arch, config, log, device=arguments.device)
        trainer.run(
            arguments.resume,
            stop,
            on_eval=None if families else judge_scores,
            init_from=arguments.init_from,
            warm_start=arguments.warm_start,
            adopt_autoencoder=arguments.adopt_autoencoder,
        )


if __name__ == "__main__":
    main()
