"""Speed of the edit at Stable Diffusion 1.5 dimensions (random weights, CPU by default).

Prints: one UNet step with the edit processors against the stock processors, for 1 and 4 concepts
(targets <= 3% and <= 6%), and one training step against one plain forward pass (target <= 2.5x).
Usage: python benchmarks/overhead.py [--latent 32] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from perfusion.images import load_training_images
from perfusion.loader import find_runtime, load_concepts
from perfusion.processor import PerfusionAttnProcessor
from perfusion.testing import handmade_concept, sd15_shaped_pipeline, write_concept_images
from perfusion.text import encode, tokenize
from perfusion.train import ConceptTrainer, TrainingConfig

SUPERCATEGORIES = ("cat", "dog", "cup", "bird")


def seconds(call, repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def random_inverse_covariance(width: int, seed: int = 0) -> torch.Tensor:
    samples = torch.randn(4 * width, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.linalg.inv(samples.T @ samples / samples.shape[0])


class ProcessorSwitch:
    """Swap between the stock processors (no hooks) and the installed edit processors."""

    def __init__(self, pipe):
        self.pipe, self.runtime = pipe, find_runtime(pipe)
        self.edit = dict(pipe.unet.attn_processors)
        self.stock = {k: v.original if isinstance(v, PerfusionAttnProcessor) else v for k, v in self.edit.items()}
        self.remembered = list(self.runtime.router.remembered)

    def use_stock(self):
        self.runtime.detach()
        self.pipe.unet.set_attn_processor(dict(self.stock))

    def use_edit(self):
        self.pipe.unet.set_attn_processor(dict(self.edit))
        self.runtime.attach(self.pipe.text_encoder, self.pipe.unet)
        self.runtime.router.remembered.extend(self.remembered)


def unet_overhead(pipe, latent: int, rounds: int, repeats: int) -> dict[str, float]:
    concepts = [handmade_concept(pipe, f"<c{i}>", word, seed=i) for i, word in enumerate(SUPERCATEGORIES)]
    load_concepts(pipe, concepts, inverse_covariance=random_inverse_covariance(768), check=False)
    prompts = {
        "1 concept, CFG pair": ["", "a photo of a <c0> on red"],
        "1 concept, both rows": ["a photo of a <c0> on red", "a photo of a <c0> on blue"],
        "4 concepts, CFG pair": ["", "<c0> next to <c1> and <c2> and <c3>"],
        "4 concepts, both rows": ["<c0> next to <c1> and <c2> and <c3>", "<c3> and <c2> next to <c1> and <c0>"],
    }
    with torch.no_grad():
        encodings = {name: encode(pipe.text_encoder, tokenize(pipe.tokenizer, rows)) for name, rows in prompts.items()}
    switch = ProcessorSwitch(pipe)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, latent, latent, generator=generator)
    timestep = torch.tensor([500, 500])

    def step(states):
        with torch.no_grad():
            pipe.unet(sample, timestep, encoder_hidden_states=states)

    ratios = {name: [] for name in prompts}
    for _ in range(rounds):
        for name, states in encodings.items():
            switch.use_stock()
            stock = seconds(lambda: step(states), repeats)
            switch.use_edit()
            edited = seconds(lambda: step(states), repeats)
            ratios[name].append(edited / stock)
    return {name: statistics.median(values) for name, values in ratios.items()}


def training_ratio(pipe, latent: int, rounds: int, repeats: int, work: Path) -> float:
    images = load_training_images(write_concept_images(work / "images", count=4, size=latent * pipe.vae_scale_factor))
    config = TrainingConfig(batch_size=2, gradient_accumulation=1, resolution=latent * pipe.vae_scale_factor)
    trainer = ConceptTrainer(pipe, images, "<mydisc>", "cat", config)
    ids = tokenize(pipe.tokenizer, ["a photo of a cat"] * config.batch_size)
    noisy, timesteps, _, _, _ = trainer.micro_batch()

    def plain_forward():
        with torch.no_grad():
            pipe.unet(noisy, timesteps, encoder_hidden_states=encode(pipe.text_encoder, ids))

    trainer.install(inverse_covariance=random_inverse_covariance(768))
    ratios = [seconds(trainer.step, repeats) / seconds(plain_forward, repeats) for _ in range(rounds)]
    trainer.uninstall()
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256px images)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median ratio is printed")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        pipe = sd15_shaped_pipeline(Path(work))
        pipe.unet.requires_grad_(False)
        print(f"SD1.5-shaped pipeline (random weights) built in {time.perf_counter() - started:.0f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {args.latent}x{args.latent}, batch 2")  # fmt: skip
        print("UNet step, edit processors / stock processors (median of rounds):")
        targets = {"1": 1.03, "4": 1.06}
        for name, ratio in unet_overhead(pipe, args.latent, args.rounds, args.repeats).items():
            target = targets[name[0]]
            print(f"  {name:<24} {ratio:6.3f}x  ({(ratio - 1) * 100:+.1f}%; target <= {(target - 1) * 100:.0f}%)")
        from perfusion.loader import unload_concepts

        unload_concepts(pipe)
        ratio = training_ratio(pipe, args.latent, args.rounds, args.repeats, Path(work))
        print(f"Training step (batch 2, backward to v* and o*_V) / plain forward: {ratio:.2f}x (target <= 2.5x)")


if __name__ == "__main__":
    main()
