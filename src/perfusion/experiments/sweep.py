"""A beta sweep: generate every prompt at every beta with fixed seeds, score, tabulate, plot the Pareto front."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from perfusion.concept.format import Concept
from perfusion.experiments.prompt_sets import EvalPrompt
from perfusion.experiments.scoring import Scores
from perfusion.experiments.trend import Trend, monotone_within_noise, sweep_trends
from perfusion.files import atomic_write, save_png
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.sheets import SheetRow, prompt_cells, write_sheet


class SweepError(ValueError):
    """Sweep settings that cannot be used."""


@dataclass
class SweepConfig:
    betas: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    tau: float | None = None  # None: the concept's own default
    images_per_prompt: int = 2
    seed: int = 0  # prompt i uses seeds seed + i * images_per_prompt ...
    steps: int = 25
    guidance: float | None = None  # None: the pipeline's own (7.5; SDXL 5.0)
    global_lock: bool = False
    composition: str = "joint"  # prompts with several concepts (perfusion.composition.regions)
    height: int | None = None  # pixels; None: the pipeline's own size
    width: int | None = None


@dataclass
class SweepRow:
    beta: float
    alignment: float
    fidelity: float
    recognised: float | None
    accepted: float | None
    images: int
    seconds: float


@dataclass
class SweepResult:
    rows: list[SweepRow]
    trends: list[Trend]  # each metric's paired slope over beta, with its noise (experiments.trend)

    @property
    def monotone(self) -> bool | None:
        return monotone_within_noise(self.trends)


def parse_betas(text: str) -> tuple[float, ...]:
    """ "0.5:0.9:9" (start:stop:count, inclusive) or "0.5,0.7,0.9"."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            count = int(count)
            if count < 1:
                raise ValueError
            step = (float(stop) - float(start)) / max(count - 1, 1)
            return tuple(round(float(start) + index * step, 6) for index in range(count))
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise SweepError(f"--betas {text!r}: expected start:stop:count or a comma-separated list") from None


def slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def generate_prompts(
    pipe,
    concept: Concept,
    prompts: list[EvalPrompt],
    config: SweepConfig,
    beta: float | None,
    out_dir: Path | None,
    subject: str | None = None,
) -> dict[EvalPrompt, list[Image.Image]]:
    """Images for every prompt at one beta (None: the concept's default), saved under ``out_dir`` if given."""
    settings = {concept.token: (beta, config.tau)}
    images_by_prompt = {}
    for index, prompt in enumerate(prompts):
        generation = GenerationConfig(
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            num_images_per_prompt=config.images_per_prompt,
            seed=config.seed + index * config.images_per_prompt,
            global_lock=config.global_lock,
            composition=config.composition,
            height=config.height,
            width=config.width,
        )
        text = prompt.text(subject or concept.token)
        images = generate(pipe, text, generation, settings)
        images_by_prompt[prompt] = images
        if out_dir is not None:
            for number, image in enumerate(images):
                path = out_dir / f"{index:02d}-{slug(text)}-{number}.png"
                save_png(image, path)
    return images_by_prompt


def run_sweep(
    pipe,
    concept: Concept,
    prompts: list[EvalPrompt],
    config: SweepConfig,
    scorer,
    references,
    out_dir: Path,
    progress: bool = True,
) -> SweepResult:
    """The concept must be loaded in ``pipe``. Writes images, metrics.csv, metrics.json (with the trends), pareto.png and
    sheet.png (every image scored, one row per beta)."""
    from perfusion.pipeline.generation import check_gate

    for beta in config.betas:
        check_gate(beta, config.tau)
    rows, per_prompt, sheet_rows = [], [], []
    for beta in tqdm(config.betas, desc="beta sweep", disable=not progress):
        started = time.perf_counter()
        images = generate_prompts(pipe, concept, prompts, config, beta, out_dir / f"beta-{beta:.3f}")
        scores: Scores = scorer.score(images, references, concept.supercategory)
        count = sum(len(batch) for batch in images.values())
        rows.append(
            SweepRow(
                beta,
                scores.alignment,
                scores.fidelity,
                scores.recognised,
                scores.accepted,
                count,
                time.perf_counter() - started,
            )
        )
        per_prompt.append(scores.per_prompt)
        sheet_rows.append(SheetRow(f"beta {beta:.3f}", prompt_cells(images)))
    result = SweepResult(rows, sweep_trends(list(config.betas), per_prompt))
    about = {
        "concept": concept.token,
        "scorer": scorer.name,
        "config": asdict(config),
        "trends": [asdict(trend) for trend in result.trends],
        "monotone_within_noise": result.monotone,
    }
    write_table(rows, out_dir, about)
    write_sheet(out_dir / "sheet.png", sheet_rows, f"{concept.token}: one row per beta ({scorer.name})")
    plot_sweep({f"perfusion {concept.token}": rows}, out_dir / "pareto.png", scorer.name)
    return result


def write_table(rows: list[SweepRow], out_dir: Path, about: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [asdict(row) for row in rows]
    atomic_write(out_dir / "metrics.json", lambda t: t.write_text(json.dumps({**about, "rows": records}, indent=2)))

    def write_csv(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)

    atomic_write(out_dir / "metrics.csv", write_csv)


def plot_sweep(series: dict[str, list[SweepRow]], path: Path, scorer_name: str) -> Path:
    from perfusion.experiments.pareto import SweepPoint, pareto_plot

    points = [SweepPoint(name, row.fidelity, row.alignment, row.beta) for name, rows in series.items() for row in rows]
    labels = {"CLIP": ("CLIP-I (image-image)", "CLIP-T (image-text)")}.get(scorer_name)
    kwargs = {"fidelity_label": labels[0], "alignment_label": labels[1]} if labels else {}
    return pareto_plot(points, path, title="fidelity vs alignment, one point per beta", **kwargs)
