"""`perfusion demo`: the whole job on the embedded micro-world model, with a report a person can look at.

1. train a concept from a shipped example (4-6 images and a supercategory word), print the file size;
2. generate it in contexts it never saw (backgrounds, positions, sizes, other objects), several seeds each;
3. sweep beta and plot fidelity against alignment;
4. train a second concept and compose both in one prompt;
5. write report.html (training images, grids with prompts, the Pareto plot, metrics, sizes, timings).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from perfusion.experiments.prompt_sets import EvalPrompt, world_prompts
from perfusion.experiments.report import ImageRow, Section, write_report
from perfusion.experiments.scoring import WorldScorer
from perfusion.experiments.sweep import SweepConfig, generate_prompts, run_sweep, slug
from perfusion.files import atomic_write, save_png
from perfusion.sheets import SheetRow, prompt_cells, write_sheet
from perfusion.training.trainer import TrainingConfig
from perfusion.world import lab_recipe


@dataclass
class DemoConfig:
    concepts: tuple[str, str] = ("<mycat>", "<mymug>")  # shipped examples: the first is swept, both are composed
    training: TrainingConfig = field(default_factory=lab_recipe.training_config)
    sweep: SweepConfig = field(
        default_factory=lambda: SweepConfig(guidance=lab_recipe.GUIDANCE, composition=lab_recipe.COMPOSITION)
    )
    prompts: int = 8  # new-context prompts per concept
    composition_backgrounds: tuple[str, ...] = ("red", "blue", "green", "yellow")


def quick(config: DemoConfig) -> DemoConfig:
    """A smoke-test budget: a few steps, two betas, two prompts."""
    config.training.steps = 4
    config.sweep = replace(config.sweep, betas=(0.6, 0.8), images_per_prompt=1, steps=4)
    config.prompts = 2
    config.composition_backgrounds = config.composition_backgrounds[:1]
    return config


def save_images(images: list[Image.Image], directory: Path, stem: str) -> list[Path]:
    paths = []
    for number, image in enumerate(images):
        path = directory / f"{stem}-{number}.png"
        save_png(image, path)
        paths.append(path)
    return paths


def train_example(pipe, token: str, config: DemoConfig, out: Path, log):
    from perfusion.training.images import load_training_images
    from perfusion.training.trainer import train_concept
    from perfusion.world.examples import example_concept

    example = example_concept(token)
    images = load_training_images(example.directory, example.mask_dir)
    result = train_concept(pipe, images, example.token, example.supercategory, config.training)
    path = result.concept.save(out / "concepts" / f"{example.directory.name}.safetensors")
    log(
        f"{example.token} ({example.supercategory}, {example.object}): {len(images)} images, "
        f"{config.training.steps} steps in {result.seconds:.0f} s, {path.stat().st_size / 1000:.1f} KB -> {path}"
    )
    return example, images, result, path


def run_demo(pipe, out: Path, config: DemoConfig, log=print) -> Path:
    from perfusion.pipeline.loader import load_concepts

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    sections, summary = [], {"config": asdict(config), "concepts": {}}
    trained = []
    for token in config.concepts:
        example, images, result, path = train_example(pipe, token, config, out, log)
        trained.append((example, images, result, path))
        summary["concepts"][token] = {
            "object": example.object,
            "bytes": path.stat().st_size,
            "seconds": result.seconds,
            "held_out_loss": result.held_out_loss,
        }
        sections.append(
            Section(
                f"Training images of {token} (supercategory '{example.supercategory}')",
                f"{len(images)} images; {config.training.steps} steps in {result.seconds:.0f} s; concept file "
                f"{path.stat().st_size / 1000:.1f} KB; loss on fixed noise {result.held_out_loss[0]:.4f} -> {result.held_out_loss[1]:.4f}",
                rows=[
                    ImageRow(
                        "",
                        [
                            (p, p.name)
                            for p in copy_images(example.image_paths(), out / "training" / example.directory.name)
                        ],
                    )
                ],
            )
        )
    load_concepts(pipe, [item[3] for item in trained])

    example, images, result, _ = trained[0]
    concept = result.concept
    scorer = WorldScorer(example.object)
    prompts = world_prompts(example.supercategory, config.prompts)
    generated = generate_prompts(pipe, concept, prompts, config.sweep, None, out / "contexts")
    rows = []
    for index, (prompt, batch) in enumerate(generated.items()):
        paths = sorted((out / "contexts").glob(f"{index:02d}-*.png"))
        rows.append(ImageRow(prompt.text(concept.token), [(p, f"seed {n}") for n, p in enumerate(paths)]))
    scores = scorer.score(generated, images_of(example), example.supercategory)
    # The same prompts and seeds with the plain supercategory word: what the base model gives without the concept.
    plain = generate_prompts(pipe, concept, prompts, config.sweep, None, None, subject=example.supercategory)
    plain_scores = scorer.score(plain, images_of(example), example.supercategory)
    write_sheet(
        out / "contexts.png",
        [
            SheetRow("training images", [(image, "") for image in images_of(example)]),
            SheetRow(f"{concept.token} (beta {concept.beta})", prompt_cells(generated)),
            SheetRow(f"'{example.supercategory}' (no concept)", prompt_cells(plain)),
        ],
        f"{concept.token} in new contexts, and the base model with '{example.supercategory}'",
    )
    summary["new_contexts"], summary["supercategory_only"] = asdict(scores), asdict(plain_scores)
    sections.append(
        Section(
            f"{concept.token} in new contexts (beta {concept.beta}, tau {concept.tau})",
            f"judge: recognised as the {example.object} {scores.recognised:.2f}, any object accepted {scores.accepted:.2f}, "
            f"alignment {scores.alignment:.2f}, fidelity (accepted images) {scores.fidelity:.2f}; the same prompts and seeds "
            f"with '{example.supercategory}' instead of {concept.token}: recognised {plain_scores.recognised:.2f}, accepted "
            f"{plain_scores.accepted:.2f}, alignment {plain_scores.alignment:.2f}, fidelity {plain_scores.fidelity:.2f}. "
            "Contact sheet: contexts.png",
            rows=rows,
        )
    )

    sweep = run_sweep(pipe, concept, prompts, config.sweep, scorer, images_of(example), out / "sweep")
    summary["sweep"] = [asdict(row) for row in sweep.rows]
    summary["sweep_trends"], summary["sweep_monotone_within_noise"] = [asdict(t) for t in sweep.trends], sweep.monotone
    trends = "; ".join(trend.describe() for trend in sweep.trends)
    sections.append(
        Section(
            "Beta sweep: fidelity against alignment",
            "Lower beta: more like the concept; higher beta: "
            f"more like the prompt. Measured trend as beta rises (paired over prompts): {trends or 'none'}.",
            table=[asdict(row) for row in sweep.rows],
            plot=out / "sweep" / "pareto.png",
        )
    )

    sections.append(composition_section(pipe, trained, config, out, summary))
    summary["seconds"] = time.perf_counter() - started
    atomic_write(out / "summary.json", lambda t: t.write_text(json.dumps(summary, indent=2, default=str)))
    report = write_report(out / "report.html", "perfusion demo on the embedded micro-world model", sections)
    log(f"report: {report} ({summary['seconds'] / 60:.1f} min in all)")
    return report


def copy_images(paths: list[Path], directory: Path) -> list[Path]:
    """The report links only what lies in its own folder."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = [directory / path.name for path in paths]
    for path, copy in zip(paths, copies):
        copy.write_bytes(path.read_bytes())
    return copies


def images_of(example) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in example.image_paths()]


def composition_section(pipe, trained, config: DemoConfig, out: Path, summary: dict) -> Section:
    """Both concepts in one prompt, and a concept beside an ordinary member of its own supercategory."""
    from perfusion.world.judge import Judge

    (first, _, first_result, _), (second, _, _, _) = trained[:2]
    judge = Judge.load()
    cases = [
        (f"a photo of a {first.token} next to a {second.token} on a {bg} background", {first.object, second.object})
        for bg in config.composition_backgrounds
    ]
    cases.append((f"a photo of a {first.token} next to a {first.supercategory} on a blue background", {first.object}))
    rows, successes, sheet_rows = [], [], []
    for index, (text, wanted) in enumerate(cases):
        template = EvalPrompt(text.replace(first.token, "{}"))
        batch = generate_prompts(pipe, first_result.concept, [template], config.sweep, None, None)[template]
        paths = save_images(batch, out / "composition", f"{index:02d}-{slug(text)}")
        verdicts = judge.predict([image.resize((64, 64)) for image in batch])
        hits = [wanted <= set(v.present) and (len(wanted) == 2 or len(v.present) == 2) for v in verdicts]
        successes.extend(hits)
        rows.append(ImageRow(text, [(p, "both found" if hit else "not both") for p, hit in zip(paths, hits)]))
        sheet_rows.append(
            SheetRow(text, [(image, ", ".join(v.present) or "nothing recognised") for image, v in zip(batch, verdicts)])
        )
    write_sheet(out / "composition.png", sheet_rows, "composition: what the judge names in each image")
    rate = sum(successes) / len(successes)
    summary["composition_success"] = rate
    mode = "each concept in its own region" if config.sweep.composition == "regions" else "one joint edit"
    text = f"share of images in which the judge finds every asked-for object: {rate:.2f} (two concepts: {mode})"
    return Section("Composition", text, rows=rows)
