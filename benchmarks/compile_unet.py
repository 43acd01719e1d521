"""torch.compile of the UNet with concepts loaded: compile time, a call's time against eager, and the largest pixel
difference, on the tiny test pipeline (CPU) or a given model.

    python benchmarks/compile_unet.py [--model DIR] [--backend inductor] [--steps 4] [--size 16]

Run it alone: it times things.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from perfusion.pipeline.loader import load_concepts
from perfusion.testing import build_tiny_pipeline, handmade_concept, load_pipeline, small_corpus


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder (default: the tiny test pipeline, built here)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(args.model) if args.model else build_tiny_pipeline(Path(tempfile.mkdtemp()))
    pipe = load_pipeline(folder)
    load_concepts(pipe, handmade_concept(pipe), captions=small_corpus())

    def draw(prompt):
        generator = torch.Generator().manual_seed(0)
        size = dict(height=args.size, width=args.size)
        return pipe(prompt, num_inference_steps=args.steps, generator=generator, output_type="np", **size).images

    prompts = ["a photo of a <mycat>", "a <mycat> on a sofa", "a photo of a cat"]
    eager = {prompt: draw(prompt) for prompt in prompts}
    eager_seconds = min(timed(lambda: draw(prompts[1]))[1] for _ in range(args.repeats))
    pipe.unet = torch.compile(pipe.unet, backend=args.backend)
    _, compile_seconds = timed(lambda: draw(prompts[0]))
    compiled = {prompt: draw(prompt) for prompt in prompts}
    compiled_seconds = min(timed(lambda: draw(prompts[1]))[1] for _ in range(args.repeats))
    difference = max(float(np.abs(compiled[p] - eager[p]).max()) for p in prompts) * 255
    print(f"backend {args.backend}, {args.steps} steps at {args.size}px, torch {torch.__version__}")
    print(f"first call (compiles): {compile_seconds:.1f} s")
    print(f"a call: eager {eager_seconds:.3f} s, compiled {compiled_seconds:.3f} s (best of {args.repeats})")
    print(f"largest pixel difference from eager, over {len(prompts)} prompts: {difference:.4f} / 255")


if __name__ == "__main__":
    main()
