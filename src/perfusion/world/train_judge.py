"""Train the judge on fresh renders and write its weights (with the measured accuracies) to assets/judge.safetensors.

    nice -n 10 python -m perfusion.world.train_judge [--steps 3000] [--resume] [--threads 1]
    python -m perfusion.world.train_judge --evaluate-only [--eval-size 5000]

Every batch is new scenes (held-out objects and two-object scenes included), degraded by `augment`; a share of them
has an object replaced by its colours without its shape (`negatives`), and a share of each batch is failed
generations (`hard_negatives`), both labelled NOTHING. Accuracy is measured on scenes from a seed range training never
uses, clean and degraded, with the refusal of each negative kind and of the held-out failed generations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment
from .hard_negatives import HardNegatives
from .judge import JUDGE_PATH, Judge, save_judge
from .judge_data import EVAL_SEEDS, IGNORE, TRAIN_SEEDS, draw_negatives, labelled_batch, specs_from_seeds
from .judge_model import HEAD_CLASSES, NOTHING, OBJECT_CLASSES, JudgeNet, JudgeNetConfig
from .negatives import KINDS


@dataclass(frozen=True)
class JudgeTrainingConfig:
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    present_weight: float = 1.0  # weight of the multi-label "objects present" loss
    eval_size: int = 4000
    checkpoint_every: int = 250
    seed: int = 0
    negative_share: float = 0.3  # scenes with an object replaced by its colours without its shape (world.negatives)
    hard_negative_share: float = 0.1  # images per batch drawn from the failed generations (world.hard_negatives)


def judge_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], config: JudgeTrainingConfig
) -> torch.Tensor:
    total = (
        F.binary_cross_entropy_with_logits(logits["present"], targets["present"])
        * config.present_weight
        * len(HEAD_CLASSES["object"])
        / 4
    )
    for name in HEAD_CLASSES:
        if (targets[name] != IGNORE).any():
            total = total + F.cross_entropy(logits[name], targets[name], ignore_index=IGNORE)
    return total


def learning_rate(step: int, config: JudgeTrainingConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


OBJECT_HEADS = ("object", "left_object", "right_object")


def count_refused(scores: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(objects read as NOTHING, objects labelled NOTHING) over the object heads; ``scores`` are logits or
    probabilities per head."""
    nothing = OBJECT_CLASSES.index(NOTHING)
    refused = total = 0
    for head in OBJECT_HEADS:
        wanted = targets[head] == nothing
        refused += int((scores[head].argmax(-1) == nothing)[wanted].sum())
        total += int(wanted.sum())
    return refused, total


@torch.no_grad()
def refusals(net: JudgeNet, size: int, batch_size: int = 200) -> dict[str, float]:
    """Per negative kind, the share of fresh negatives refused: every replaced object read as NOTHING (one-object
    scenes by the object head, pairs by the left/right heads)."""
    net.eval()
    rates = {}
    generator = torch.Generator().manual_seed(54321)
    for offset, kind in enumerate(KINDS):
        refused = total = 0
        first = EVAL_SEEDS + 500_000 * (offset + 1)
        for start in range(0, size, batch_size):
            specs = specs_from_seeds(range(first + start, first + min(size, start + batch_size)))
            negatives = draw_negatives(specs, 1.0, seed=first + start, kinds=(kind,))
            images, targets = labelled_batch(specs, negatives, seed=first + start)
            logits, _ = net(augment(images, generator))
            counted = count_refused(logits, targets)
            refused, total = refused + counted[0], total + counted[1]
        rates[kind] = refused / total
    return rates


@torch.no_grad()
def evaluate(net: JudgeNet, size: int, degrade: bool, batch_size: int = 200) -> dict[str, float]:
    """Accuracy per head on fresh scenes (only scenes where the head applies), plus exact sets of the auxiliary
    "present" head (reported, never read by predictions)."""
    net.eval()
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    generator = torch.Generator().manual_seed(12345)
    for start in range(0, size, batch_size):
        images, targets = labelled_batch(
            specs_from_seeds(range(EVAL_SEEDS + start, EVAL_SEEDS + min(size, start + batch_size)))
        )
        if degrade:
            images = augment(images, generator)
        logits, _ = net(images)
        for name in HEAD_CLASSES:
            valid = targets[name] != IGNORE
            correct[name] = correct.get(name, 0) + int((logits[name].argmax(-1) == targets[name])[valid].sum())
            total[name] = total.get(name, 0) + int(valid.sum())
        exact = ((logits["present"] > 0).float() == targets["present"]).all(dim=-1)
        correct["present"] = correct.get("present", 0) + int(exact.sum())
        total["present"] = total.get("present", 0) + len(exact)
    return {name: correct[name] / total[name] for name in correct if total[name]}


def train(config: JudgeTrainingConfig, checkpoint: Path, resume: bool, log=print) -> JudgeNet:
    torch.manual_seed(config.seed)
    hard = HardNegatives.load() if config.hard_negative_share > 0 else None
    net = JudgeNet(JudgeNetConfig())
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = state["step"]
        log(f"resumed at step {step}")
    started, running = time.time(), 0.0
    while step < config.steps:
        net.train()
        first_seed = TRAIN_SEEDS + step * config.batch_size
        hard_count = round(config.hard_negative_share * config.batch_size) if hard is not None else 0
        specs = specs_from_seeds(range(first_seed, first_seed + config.batch_size - hard_count))
        images, targets = labelled_batch(
            specs, draw_negatives(specs, config.negative_share, seed=first_seed), seed=first_seed
        )
        if hard_count:
            images, targets = hard.appended(images, targets, hard_count, generator, split="train")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        logits, _ = net(augment(images, generator))
        loss = judge_loss(logits, targets, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        step += 1
        if step % 50 == 0:
            log(
                f"step {step}/{config.steps} loss {running:.4f} lr {learning_rate(step, config):.2e} {time.time() - started:.0f}s"
            )
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
    return net


def main(argv: list[str] | None = None) -> None:
    defaults = JudgeTrainingConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared; keep it small)")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/judge.ckpt"))
    parser.add_argument("--out", type=Path, default=JUDGE_PATH)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true", help="measure the shipped judge; train nothing")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    config = JudgeTrainingConfig(**{name: getattr(arguments, name) for name in asdict(defaults)})
    if arguments.evaluate_only:
        net = Judge.load(arguments.out).net
    else:
        net = train(config, arguments.checkpoint, arguments.resume)
    accuracy = {
        "clean": evaluate(net, config.eval_size, degrade=False),
        "degraded": evaluate(net, config.eval_size, degrade=True),
        "refused": refusals(net, config.eval_size // 4),
    }
    if HardNegatives.exists():
        accuracy["refused"]["failed_generations"] = HardNegatives.load().refused(net, split="validation")
    print(json.dumps(accuracy, indent=2))
    if not arguments.evaluate_only:
        save_judge(
            net, arguments.out, {"accuracy": accuracy, "training": asdict(config), "augment": asdict(AugmentConfig())}
        )
        print(f"judge written to {arguments.out} ({arguments.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
