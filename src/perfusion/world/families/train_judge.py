"""Train the families judge on fresh renders and write its weights to assets/families_judge.safetensors.

    python -m perfusion.world.families.train_judge [--steps 4000] [--resume] [--workers 1]

Every batch is new (judge_data.labelled_batch), degraded by `perfusion.world.augment` so that soft diffusion
samples read as what they show. Losses: cross-entropy per head, L1 on the regressed parameters, and a supervised
contrastive loss on the identity embedding (two views of each instance are positives; every other instance,
near neighbours included, a negative). Checkpoints go to checkpoints/families-judge.pt.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from perfusion.files import atomic_torch_save
from perfusion.world.augment import augment

from .eye_labels import UNPROMPTED_PATH, EyeLabels, sample_rows
from .judge import JUDGE_PATH, Judge, save_judge
from .judge_data import IGNORE, BatchRecipe, labelled_batch
from .judge_net import HEAD_CLASSES, JudgeNet, JudgeNetConfig
from .regenerated import REGENERATED_PATH, Regenerated

CHECKPOINT = Path("checkpoints/families-judge.pt")


class TrainingRefused(SystemExit):
    """A judge training run that would overwrite something or lacks its data: one line, no traceback."""


@dataclass(frozen=True)
class JudgeTrainingConfig:
    steps: int = 4000
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    regression_weight: float = 4.0
    identity_weight: float = 1.0
    temperature: float = 0.1
    checkpoint_every: int = 200
    vae_share: float = 0.3  # images passed through the base model's autoencoder first: generated images are its decodes
    eye_labelled: int = 16  # generated images labelled by eye (eye_labels, train split) added to each batch, if any
    unprompted: int = 16  # empty-prompt generations (eye_labels.collect_unprompted), refused, added to each batch
    regenerated: int = 0  # renders regenerated part of the way by the base model (regenerated.py), added to each batch
    head_weights: dict[str, float] = field(default_factory=dict)  # a head's cross-entropy multiplied (default 1)

    def __post_init__(self):
        unknown = sorted(set(self.head_weights) - set(HEAD_CLASSES))
        if unknown:
            raise ValueError(f"head_weights: unknown heads {', '.join(unknown)}; heads: {', '.join(HEAD_CLASSES)}")
        negative = sorted(name for name, weight in self.head_weights.items() if not weight >= 0)
        if negative:
            raise ValueError(f"head_weights: {', '.join(negative)} must be >= 0")


def supervised_contrastive(embeddings: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) over the rows with a group: each row's other views are its positives."""
    keep = groups >= 0
    embeddings, groups = embeddings[keep], groups[keep]
    similarity = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(len(groups), dtype=torch.bool)
    similarity = similarity.masked_fill(self_mask, -1e9)
    positives = (groups[:, None] == groups[None, :]) & ~self_mask
    log_probability = similarity - similarity.logsumexp(dim=1, keepdim=True)
    per_row = -(log_probability * positives).sum(1) / positives.sum(1).clamp(min=1)
    return per_row[positives.any(1)].mean()


def judge_loss(net: JudgeNet, batch, config: JudgeTrainingConfig, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits, regression, embeddings = net(images)
    parts = {}
    for name in HEAD_CLASSES:
        target = batch.targets[name]
        if (target != IGNORE).any():
            weight = config.head_weights.get(name, 1.0)
            parts[name] = weight * F.cross_entropy(logits[name], target, ignore_index=IGNORE)
    mask = batch.regression_mask
    parts["regression"] = config.regression_weight * (regression - batch.regression).abs()[mask].mean()
    parts["identity"] = config.identity_weight * supervised_contrastive(embeddings, batch.identity, config.temperature)
    return sum(parts.values()), {name: value.item() for name, value in parts.items()}


@torch.no_grad()
def autoencoder_roundtrip(images: torch.Tensor, vae, share: float, generator: torch.Generator) -> torch.Tensor:
    """A random ``share`` of the images replaced by the autoencoder's reconstruction (its softness, its colours)."""
    chosen = torch.rand(len(images), generator=generator) < share
    if vae is None or not chosen.any():
        return images
    picked = images[chosen] * 2 - 1
    decoded = vae.decode(vae.encode(picked).latent_dist.mean).sample
    images = images.clone()
    images[chosen] = ((decoded + 1) / 2).clamp(0, 1)
    return images


def with_rows(batch, images: torch.Tensor, extra: torch.Tensor, targets: dict, regression=None, known=None):
    """The batch with ``extra`` images appended, with their targets per head (and regression targets, if known)."""
    count = len(extra)
    width = batch.regression.shape[1]
    batch = replace(
        batch,
        images=torch.cat([batch.images, extra]),
        targets={head: torch.cat([target, targets[head]]) for head, target in batch.targets.items()},
        regression=torch.cat([batch.regression, torch.zeros(count, width) if regression is None else regression]),
        regression_mask=torch.cat(
            [batch.regression_mask, torch.zeros(count, width, dtype=bool) if known is None else known]
        ),
        identity=torch.cat([batch.identity, torch.full((count,), -1)]),
    )
    return batch, torch.cat([images, extra])


def with_eye_labels(batch, images: torch.Tensor, labels, count: int, generator: torch.Generator):
    """The batch with ``count`` generated images labelled by eye appended: accepted or refused, every other head
    ignored (what else they show is not known)."""
    extra, accepted = sample_rows(labels, count, generator)
    targets = {head: accepted if head == "accept" else torch.full((count,), IGNORE) for head in batch.targets}
    return with_rows(batch, images, extra, targets)


def with_regenerated(batch, images: torch.Tensor, store, count: int, generator: torch.Generator):
    """The batch with ``count`` regenerated renders appended, every head labelled by the render's ground truth."""
    return with_rows(batch, images, *store.sample_rows(count, generator))


def learning_rate(step: int, config: JudgeTrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class BatchStream(torch.utils.data.IterableDataset):
    """Endless labelled batches, each worker with its own seed stream."""

    def __init__(self, seed: int, recipe: BatchRecipe):
        self.seed, self.recipe = seed, recipe

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"judge/{self.seed}/{info.id if info else 0}")
        while True:
            yield labelled_batch(rng, self.recipe)


def flushed(message: str) -> None:
    print(message, flush=True)


def train(
    config: JudgeTrainingConfig,
    resume: bool,
    workers: int,
    out: Path,
    vae=None,
    log=flushed,
    start_from: Path | None = None,
    seed: int = 0,
    checkpoint: Path = CHECKPOINT,
) -> JudgeNet:
    """Train from scratch, go on from ``checkpoint`` (``resume``), or start a new schedule from the weights of a
    judge file (``start_from``: fine-tuning, with a fresh optimizer and a fresh stream of batches from ``seed``).
    Without ``resume`` an existing checkpoint is refused, not overwritten; so is ``out`` being ``start_from``."""
    if not resume and checkpoint.exists():
        raise TrainingRefused(f"{checkpoint} exists: give --resume to go on, or another --checkpoint")
    if start_from is not None and Path(start_from).resolve() == Path(out).resolve():
        raise TrainingRefused(f"--out {out} would overwrite the judge it starts from; write elsewhere")
    if config.regenerated and not REGENERATED_PATH.exists():
        raise TrainingRefused(
            f"--regenerated {config.regenerated}: no {REGENERATED_PATH}; "
            "collect it with python -m perfusion.world.families.regenerated, or give --regenerated 0"
        )
    if start_from is not None and not (resume and checkpoint.exists()):
        try:
            net = Judge.load(start_from).net.train()
        except (OSError, ValueError) as error:
            raise TrainingRefused(f"--start-from: {error}") from None
        log(f"judge: starting from the weights of {start_from}")
    else:
        net = JudgeNet(JudgeNetConfig())
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    step = 0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        step, seed = state["step"], state["step"]  # a fresh stream after a resume: batches are never reused anyway
        log(f"judge: resumed at step {step}")
    stream = torch.utils.data.DataLoader(
        BatchStream(seed, BatchRecipe()), batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    generator = torch.Generator().manual_seed(seed)
    eye_labelled = EyeLabels.load().split("train")  # the audit split is never trained on
    log(f"judge: {len(eye_labelled)} generated images labelled by eye ({int((~eye_labelled.accepted).sum())} rejected)")
    unprompted = EyeLabels.load(UNPROMPTED_PATH) if UNPROMPTED_PATH.exists() else None
    log(f"judge: {len(unprompted) if unprompted is not None else 0} empty-prompt generations, refused")
    regenerated = Regenerated.load() if config.regenerated else None
    log(f"judge: {len(regenerated) if regenerated is not None else 0} regenerated renders, every head labelled")
    provenance = {
        "training": asdict(config),
        "steps": step,
        "start_from": str(start_from) if start_from else None,
        "seed": seed,
    }
    net.train()
    started, window = time.time(), []
    for batch in stream:
        if step >= config.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        images = autoencoder_roundtrip(batch.images, vae, config.vae_share, generator)
        if len(eye_labelled) and config.eye_labelled:
            batch, images = with_eye_labels(batch, images, eye_labelled, config.eye_labelled, generator)
        if unprompted is not None and config.unprompted:
            batch, images = with_eye_labels(batch, images, unprompted, config.unprompted, generator)
        if regenerated is not None:
            batch, images = with_regenerated(batch, images, regenerated, config.regenerated, generator)
        loss, parts = judge_loss(net, batch, config, augment(images, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        provenance["steps"] = step
        window.append(parts)
        if step % 50 == 0:
            means = {name: sum(p.get(name, 0.0) for p in window) / len(window) for name in window[-1]}
            log(
                f"step {step} "
                + " ".join(f"{k}={v:.3f}" for k, v in means.items())
                + f" ({(time.time() - started) / 50:.2f} s/step)"
            )
            started, window = time.time(), []
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, checkpoint)
            net.eval()  # the weights so far are usable while training goes on
            save_judge(net, out, provenance)
            net.train()
    net.eval()
    save_judge(net, out, provenance)
    return net


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=JudgeTrainingConfig.steps)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="processes that render batches beside training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--eye-labelled", type=int, default=JudgeTrainingConfig.eye_labelled, help="eye-labelled images per batch"
    )
    parser.add_argument(
        "--unprompted", type=int, default=JudgeTrainingConfig.unprompted, help="empty-prompt generations per batch"
    )
    parser.add_argument(
        "--regenerated", type=int, default=JudgeTrainingConfig.regenerated, help="regenerated renders per batch"
    )
    parser.add_argument("--learning-rate", type=float, default=JudgeTrainingConfig.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=JudgeTrainingConfig.warmup_steps)
    parser.add_argument("--regression-weight", type=float, default=JudgeTrainingConfig.regression_weight)
    parser.add_argument(
        "--head-weight",
        action="append",
        default=[],
        metavar="HEAD=WEIGHT",
        help="multiply one head's loss (repeatable), e.g. pattern=3",
    )
    parser.add_argument("--start-from", type=Path, help="a judge file whose weights start a new schedule (fine-tuning)")
    parser.add_argument("--seed", type=int, default=0, help="of the batch stream, when not resuming")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="where the run's state is kept")
    parser.add_argument("--out", type=Path, default=JUDGE_PATH)
    parser.add_argument(
        "--vae",
        type=Path,
        default=Path("checkpoints/families/vae"),
        help="the base model's autoencoder, for the round-trip share (skipped if absent)",
    )
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    try:
        head_weights = {name: float(weight) for name, weight in (item.split("=", 1) for item in arguments.head_weight)}
    except ValueError:
        parser.error(f"--head-weight takes HEAD=WEIGHT, got {' '.join(arguments.head_weight)}")
    try:
        config = JudgeTrainingConfig(
            steps=arguments.steps,
            learning_rate=arguments.learning_rate,
            warmup_steps=arguments.warmup_steps,
            eye_labelled=arguments.eye_labelled,
            unprompted=arguments.unprompted,
            regenerated=arguments.regenerated,
            head_weights=head_weights,
            regression_weight=arguments.regression_weight,
        )
    except ValueError as error:
        parser.error(str(error))
    vae = None
    if arguments.vae.exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(arguments.vae).float().eval()
    train(
        config,
        arguments.resume,
        arguments.workers,
        arguments.out,
        vae,
        start_from=arguments.start_from,
        seed=arguments.seed,
        checkpoint=arguments.checkpoint,
    )


if __name__ == "__main__":
    main()
