"""Speed and memory of the edit at Stable Diffusion 1.5 or SDXL base dimensions (random weights, CPU by default).

Prints: one UNet step with the edit processors against the stock processors, for 1 and 4 concepts
(targets <= 3% and <= 6%), end to end and as the edit's own time (the router and each layer's edit processor timed
alone on a real step's inputs, against the stock processor: a figure the machine's noise does not swamp), one training step against one plain forward pass (target <= 2.5x), and the peak memory
of a training step against an inference step (on a GPU the allocator's peak, on a CPU the process's resident peak
above what it held before the step, sampled every few milliseconds).
Usage: python benchmarks/overhead.py [--model sd15|sdxl] [--latent 32] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
import torch

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.processor import PerfusionAttnProcessor
from perfusion.testing import handmade_concept, sd15_shaped_pipeline, sdxl_shaped_pipeline, write_concept_images
from perfusion.training.images import load_training_images
from perfusion.training.trainer import ConceptTrainer, TrainingConfig

MODELS = {"sd15": ("SD1.5", sd15_shaped_pipeline), "sdxl": ("SDXL base", sdxl_shaped_pipeline)}

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


def release_free_memory() -> None:
    """Hand the C allocator's free pages back (glibc's malloc_trim), so that the resident set is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure then includes pages freed earlier
        pass


def peak_memory(call) -> float:
    """Bytes above the start that ``call`` takes at its peak: the CUDA allocator's, else the process's resident set
    (sampled every 2 ms in a thread)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    release_free_memory()
    process = psutil.Process()
    start, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], process.memory_info().rss) - start


class ProcessorSwitch:
    """Swap between the stock processors (no hooks) and the installed edit processors."""

    def __init__(self, pipe):
        self.pipe, self.runtime = pipe, find_runtime(pipe)
        self.edit = dict(pipe.unet.attn_processors)
        self.stock = {k: v.original if isinstance(v, PerfusionAttnProcessor) else v for k, v in self.edit.items()}
        self.remembered = [list(rows) for rows in self.runtime.router.remembered]  # each text encoder's rows

    def use_stock(self):
        self.runtime.detach()
        self.pipe.unet.set_attn_processor(dict(self.stock))

    def use_edit(self):
        self.pipe.unet.set_attn_processor(dict(self.edit))
        self.runtime.attach(self.pipe.unet)
        for rows, kept in zip(self.runtime.router.remembered, self.remembered):
            rows.extend(kept)


@dataclass
class StepOverhead:
    ratios: list[float]  # edited / stock UNet step, one per round
    stock_seconds: float  # the stock step's median
    router_seconds: float  # the UNet pre-hook: matching the rows, building their entries
    processor_seconds: float  # the edit processors' time above the stock processors', over every layer

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def own_share(self) -> float:
        """The edit's own time (router and processors, timed alone) over the stock step."""
        return (self.router_seconds + self.processor_seconds) / self.stock_seconds


def edit_seconds(pipe, runtime, arguments: dict, sample, timestep, repeats: int) -> tuple[float, float]:
    """(router, processors): the edit's own added time in one UNet step, each part timed alone on the inputs a real
    step gives it (every cross-attention layer's edit processor against the stock one it wraps)."""
    inputs = {}

    def record(name, module, args, kwargs):
        inputs[name] = (args[0], kwargs.get("encoder_hidden_states"))

    layers = cross_attention_modules(pipe.unet)
    hooks = [
        module.register_forward_pre_hook(partial(record, name), with_kwargs=True) for name, module in layers.items()
    ]
    try:
        with torch.no_grad():
            pipe.unet(sample, timestep, **arguments)
    finally:
        for hook in hooks:
            hook.remove()
    router = runtime.router
    with torch.no_grad():
        route = seconds(lambda: router._before_unet(pipe.unet, (sample, timestep), dict(arguments)), repeats)
        added = 0.0
        for name, module in layers.items():  # the context of this step is set: the processors edit its rows
            hidden, encoder = inputs[name]
            processor = module.processor
            added += seconds(lambda: processor(module, hidden, encoder), repeats)
            added -= seconds(lambda: processor.original(module, hidden, encoder), repeats)
    router.context = None
    return route, added


def unet_overhead(pipe, latent: int, rounds: int, repeats: int, part_repeats: int) -> dict[str, StepOverhead]:
    concepts = [handmade_concept(pipe, f"<c{i}>", word, seed=i) for i, word in enumerate(SUPERCATEGORIES)]
    text = TextConditioning.of(pipe)
    load_concepts(pipe, concepts, inverse_covariance=random_inverse_covariance(text.width), check=False)
    prompts = {
        "1 concept, CFG pair": ["", "a photo of a <c0> on red"],
        "1 concept, both rows": ["a photo of a <c0> on red", "a photo of a <c0> on blue"],
        "4 concepts, CFG pair": ["", "<c0> next to <c1> and <c2> and <c3>"],
        "4 concepts, both rows": ["<c0> next to <c1> and <c2> and <c3>", "<c3> and <c2> next to <c1> and <c0>"],
    }
    size = latent * pipe.vae_scale_factor
    with torch.no_grad():  # encoder_hidden_states, and SDXL's added condition, as the pipeline builds them
        conditions = {
            name: text.unet_conditions(text.tokenize(rows), size, pipe.unet.dtype) for name, rows in prompts.items()
        }
    switch = ProcessorSwitch(pipe)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, latent, latent, generator=generator)
    timestep = torch.tensor([500, 500])

    def step(arguments):
        with torch.no_grad():
            pipe.unet(sample, timestep, **arguments)

    ratios = {name: [] for name in prompts}
    stock_times = {name: [] for name in prompts}
    for _ in range(rounds):
        for name, arguments in conditions.items():
            switch.use_stock()
            stock = seconds(lambda: step(arguments), repeats)
            switch.use_edit()
            edited = seconds(lambda: step(arguments), repeats)
            ratios[name].append(edited / stock)
            stock_times[name].append(stock)
    results = {}
    for name, arguments in conditions.items():
        route, processors = edit_seconds(pipe, switch.runtime, arguments, sample, timestep, part_repeats)
        results[name] = StepOverhead(ratios[name], statistics.median(stock_times[name]), route, processors)
    return results


def training_figures(pipe, latent: int, rounds: int, repeats: int, work: Path) -> tuple[float, float, float]:
    """(training step / plain forward time, peak bytes of a training step, of an inference step)."""
    images = load_training_images(write_concept_images(work / "images", count=4, size=latent * pipe.vae_scale_factor))
    config = TrainingConfig(batch_size=2, gradient_accumulation=1, resolution=latent * pipe.vae_scale_factor)
    trainer = ConceptTrainer(pipe, images, "<mydisc>", "cat", config)
    text = TextConditioning.of(pipe)
    ids = text.tokenize(["a photo of a cat"] * config.batch_size)
    noisy, timesteps, _, _, _ = trainer.micro_batch()

    def plain_forward():
        with torch.no_grad():
            pipe.unet(noisy, timesteps, **text.unet_conditions(ids, trainer.resolution, pipe.unet.dtype))

    trainer.install(inverse_covariance=random_inverse_covariance(text.width))
    ratios = [seconds(trainer.step, repeats) / seconds(plain_forward, repeats) for _ in range(rounds)]
    training_peak, inference_peak = peak_memory(trainer.step), peak_memory(plain_forward)
    trainer.uninstall()
    trainer.restore_pipeline()
    return statistics.median(ratios), training_peak, inference_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="sd15", help="the shapes: SD 1.5 or SDXL base")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256px images)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median ratio is printed")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--part-repeats", type=int, default=20, help="timed calls per part of the edit (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    label, build = MODELS[args.model]
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        pipe = build(Path(work))
        pipe.unet.requires_grad_(False)
        text = TextConditioning.of(pipe)
        print(
            f"{label}-shaped pipeline (random weights; {len(text.towers)} text encoder(s), e {text.width} wide) built in "
            f"{time.perf_counter() - started:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"latent {args.latent}x{args.latent}, batch 2"
        )
        print(
            "UNet step with the edit / stock UNet step: end to end (median of rounds, and their range), and the edit's "
            "own time timed part by part (router + every edit processor above the stock one) over the stock step:"
        )
        targets = {"1": 1.03, "4": 1.06}
        for name, figure in unet_overhead(pipe, args.latent, args.rounds, args.repeats, args.part_repeats).items():
            target = targets[name[0]]
            print(
                f"  {name:<22} end to end {figure.ratio:6.3f}x ({min(figure.ratios):.3f}-{max(figure.ratios):.3f}); "
                f"own time {figure.own_share * 100:+.2f}% (router {figure.router_seconds * 1e3:.1f} ms, processors "
                f"{figure.processor_seconds * 1e3:+.1f} ms of a {figure.stock_seconds:.2f} s step); "
                f"target <= {(target - 1) * 100:.0f}%"
            )
        from perfusion.pipeline.loader import unload_concepts

        unload_concepts(pipe)
        ratio, training_peak, inference_peak = training_figures(
            pipe, args.latent, args.rounds, args.repeats, Path(work)
        )
        print(f"Training step (batch 2, backward to v* and o*_V) / plain forward: {ratio:.2f}x (target <= 2.5x)")
        where = "CUDA allocator" if torch.cuda.is_available() else "resident set above the step's start"
        print(
            f"Peak memory ({where}): training step {training_peak / 2**30:.2f} GiB, inference step "
            f"{inference_peak / 2**30:.2f} GiB ({training_peak / max(inference_peak, 1):.1f}x)"
        )


if __name__ == "__main__":
    main()
