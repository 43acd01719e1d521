"""A focused end-to-end check of the edit's cost: stock and edited UNet steps alternated (the order swapped every
pair), for one setting (4 concepts, both rows edited) at SD1.5 or SDXL base dimensions, random weights.

Prints the median of the paired ratios and their range: on a noisy machine pairs of neighbouring calls share more of
its state than rounds minutes apart do. Usage: python benchmarks/alternating.py [--model sdxl] [--pairs 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from overhead import MODELS, SUPERCATEGORIES, ProcessorSwitch, random_inverse_covariance

from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.loader import load_concepts
from perfusion.testing import handmade_concept

ROWS = ["<c0> next to <c1> and <c2> and <c3>", "<c3> and <c2> next to <c1> and <c0>"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="sdxl")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)
    label, build = MODELS[args.model]
    with tempfile.TemporaryDirectory() as work:
        pipe = build(Path(work))
        pipe.unet.requires_grad_(False)
        text = TextConditioning.of(pipe)
        concepts = [handmade_concept(pipe, f"<c{i}>", word, seed=i) for i, word in enumerate(SUPERCATEGORIES)]
        load_concepts(pipe, concepts, inverse_covariance=random_inverse_covariance(text.width), check=False)
        with torch.no_grad():
            arguments = text.unet_conditions(text.tokenize(ROWS), args.latent * pipe.vae_scale_factor, pipe.unet.dtype)
        switch = ProcessorSwitch(pipe)
        sample = torch.randn(2, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(0))
        timestep = torch.tensor([500, 500])
        modes = {"stock": switch.use_stock, "edit": switch.use_edit}

        def timed(mode: str) -> float:
            modes[mode]()
            started = time.perf_counter()
            with torch.no_grad():
                pipe.unet(sample, timestep, **arguments)
            return time.perf_counter() - started

        timed("stock"), timed("edit")  # warm-up
        stock, edit = [], []
        for index in range(args.pairs):
            order = ("stock", "edit") if index % 2 == 0 else ("edit", "stock")
            took = {mode: timed(mode) for mode in order}
            stock.append(took["stock"])
            edit.append(took["edit"])
        ratios = [e / s for e, s in zip(edit, stock)]
        print(
            f"{label}, 4 concepts, both rows edited, latent {args.latent}x{args.latent}, batch 2: {args.pairs} alternating "
            f"pairs; paired ratio median {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}); "
            f"stock median {statistics.median(stock):.2f} s, edit median {statistics.median(edit):.2f} s"
        )


if __name__ == "__main__":
    main()
