"""The demo on the families laboratory: the whole job, scored by the laboratory's judge, with a report to look at.

    python -m perfusion.experiments.lab_demo --model DIR --out demo-out [--judge PATH] [--quick]

1. train two shipped example concepts (5 photos with masks each) with the model folder's recipe;
2. draw each in new scenes at the default beta, beside the prior (the category word) and the verbal oracle (a
   caption naming every coarse attribute of the instance), on the same prompts and seeds;
3. sweep beta, with a Pareto plot of recognised against alignment;
4. compose the two concepts in one prompt;
5. write report.html with every sheet, and summary.json:
   {"concepts": {"<mycat>": {"default_beta", "recognised", "alignment", "prior": {...}, "verbal_oracle": {...},
   "sweep": [{"beta", "recognised", "alignment"}, ...]}, ...}, "composition": {"both_recognised", "bleeding"}}
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perfusion.concept.format import BETA_RANGE
from perfusion.experiments.prompt_sets import spread
from perfusion.experiments.report import ImageRow, Section, write_report
from perfusion.files import atomic_write
from perfusion.sheets import SheetRow, write_sheet

EXAMPLES = ("mycat", "mymug")
BETAS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LabDemoConfig:
    concepts: tuple[str, ...] = (
        EXAMPLES  # shipped example folders: every one is drawn and swept, the first two composed
    )
    betas: tuple[float, ...] = BETAS
    default_beta: float | None = None  # None: each concept file's own
    prompts: int = 8  # of the 12 concept prompts, spread over their kinds
    seeds: tuple[int, ...] = (0, 1)
    composition_seeds: tuple[int, ...] = (0, 1)
    training: dict = field(default_factory=dict)  # TrainingConfig fields over the model folder's recipe
    inference_steps: int | None = None  # None: the base model's own

    def __post_init__(self):
        if len(self.concepts) < 2:
            raise ValueError("the demo composes two concepts: name at least two examples")
        if not 1 <= self.prompts <= 12:
            raise ValueError(f"prompts must be in [1, 12], got {self.prompts}")
        for beta in (*self.betas, *(() if self.default_beta is None else (self.default_beta,))):
            if not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
                raise ValueError(f"beta must be in [{BETA_RANGE[0]}, {BETA_RANGE[1]}], got {beta}")
        if not self.seeds or not self.composition_seeds:
            raise ValueError("give at least one seed")
        if self.inference_steps is not None and self.inference_steps < 1:
            raise ValueError(f"inference_steps must be >= 1, got {self.inference_steps}")


def quick(config: LabDemoConfig) -> LabDemoConfig:
    """A smoke-test budget: a few training steps, two betas, two prompts, one seed."""
    return LabDemoConfig(
        concepts=config.concepts[:2],
        betas=config.betas[:: max(len(config.betas) - 1, 1)][:2],
        default_beta=config.default_beta,
        prompts=2,
        seeds=config.seeds[:1],
        composition_seeds=config.composition_seeds[:1],
        training={**config.training, "steps": 4},
        inference_steps=config.inference_steps,
    )


def train_example(pipe, folder: str, config, out: Path, captions, log):
    """Train the shipped example ``folder``; its concept, token, instance, photos and the file written."""
    from perfusion.training.images import load_training_images
    from perfusion.training.trainer import train_concept
    from perfusion.world.families.examples import EXAMPLES_DIR, example_instances

    directory = EXAMPLES_DIR / folder
    meta = json.loads((directory / "concept.json").read_text())
    images = load_training_images(directory, directory / "masks")
    result = train_concept(
        pipe, images, meta["token"], meta["supercategory"], config, captions=captions, progress=False
    )
    path = result.concept.save(out / "concepts" / f"{folder}.safetensors")
    log(
        f"{meta['token']} ({meta['supercategory']}): {len(images)} photos, {config.steps} steps in "
        f"{result.seconds:.0f} s, {path.stat().st_size / 1000:.1f} KB -> {path}"
    )
    return result.concept, example_instances()[folder], [image.image for image in images], path, result.seconds


def compose(
    pipe, judge, galleries, pair, seeds, composition: str | None, steps=None, beta: float | None = None
) -> tuple[dict, SheetRow]:
    """Both concepts in the two-concept prompts (at ``beta``, else each file's own), scored as both recognised and
    as one concept's colour or pattern on the other (bleeding, of the images where the judge sees both)."""
    from perfusion import concept_settings
    from perfusion.world.families.concept_prompts import pair_texts
    from perfusion.world.families.sampling import generate_images
    from perfusion.world.families.scoring import bleeding, bleeding_share, both_recognised

    texts = pair_texts([token for token, _ in pair])
    settings = {} if composition is None else {"composition": composition}
    if beta is not None:
        settings["beta"] = beta
    with concept_settings(pipe, **settings):
        images = generate_images(pipe, texts, list(seeds), steps=steps)
    hits = both_recognised(judge, galleries, images, pair)
    bled = bleeding(judge, images, pair)
    cells = [
        (image, f"{texts[index // len(seeds)]} {'BOTH' if hit else '-'}{' BLED' if leak else ''}")
        for index, (image, hit, leak) in enumerate(zip(images, hits, bled))
    ]
    rates = {"both_recognised": sum(hits) / len(hits), "bleeding": bleeding_share(bled)}
    return rates, SheetRow("both concepts", cells)


def point(scores) -> dict:
    summary = scores.summary()
    return {key: summary[key] for key in ("recognised", "alignment", "attribute_match")}


def run_lab_demo(
    pipe, judge, model: Path, out: Path, config: LabDemoConfig, captions: list[str] | None = None, log=print
) -> dict:
    """The demo; ``captions``: the corpus for C (default: the model folder's, else the world's own)."""
    from perfusion import concept_settings, load_concepts
    from perfusion.experiments.pareto import SweepPoint, pareto_plot
    from perfusion.pipeline.corpus import model_captions
    from perfusion.recipes import read_recipe
    from perfusion.world.basemodel.data import world_captions
    from perfusion.world.families.concept_prompts import concept_prompts
    from perfusion.world.families.scoring import Galleries, draw_and_score

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    captions = captions or model_captions(pipe) or world_captions()
    galleries, steps = Galleries(judge), config.inference_steps
    training = read_recipe(model).training_config(**config.training)
    trained = [train_example(pipe, folder, training, out, captions, log) for folder in config.concepts]
    load_concepts(pipe, [concept for concept, *_ in trained], captions=captions)
    summary, sections = {"concepts": {}}, []
    seeds = config.seeds
    for concept, instance, photos, path, seconds in trained:
        token = concept.token
        prompts = spread(concept_prompts(instance), config.prompts)
        default = concept.beta if config.default_beta is None else config.default_beta
        rows = [SheetRow("the photos", [(image, "") for image in photos])]
        prior, row = draw_and_score(
            pipe, judge, instance, instance.category, galleries, "prior", seeds, prompts=prompts, steps=steps
        )
        rows.append(row)
        verbal, row = draw_and_score(
            pipe,
            judge,
            instance,
            "",
            galleries,
            "verbal oracle",
            seeds,
            leave_out_changed=True,
            prompts=prompts,
            steps=steps,
        )
        rows.append(row)
        sweep = []
        for beta in sorted({*config.betas, default}):
            with concept_settings(pipe, beta={token: beta}):
                scores, row = draw_and_score(
                    pipe, judge, instance, token, galleries, f"{token} beta {beta}", seeds, prompts=prompts, steps=steps
                )
            rows.append(row)
            sweep.append({"beta": beta, **point(scores)})
        at_default = next(entry for entry in sweep if entry["beta"] == default)
        summary["concepts"][token] = {
            "default_beta": default,
            "recognised": at_default["recognised"],
            "alignment": at_default["alignment"],
            "attribute_match": at_default["attribute_match"],
            "prior": point(prior),
            "verbal_oracle": point(verbal),
            "sweep": sweep,
            "bytes": path.stat().st_size,
            "training_seconds": seconds,
            "images_per_row": len(prompts) * len(seeds),
        }
        name = path.stem
        write_sheet(
            out / f"{name}.png",
            rows,
            title=f"{token}: {instance.describe()}",
            columns=max(len(prompts) * len(seeds), len(photos)),
        )
        points = [SweepPoint(token, entry["recognised"], entry["alignment"], entry["beta"]) for entry in sweep]
        points += [
            SweepPoint(
                label, summary["concepts"][token][key]["recognised"], summary["concepts"][token][key]["alignment"]
            )
            for key, label in (("prior", "prior"), ("verbal_oracle", "verbal oracle"))
        ]
        plot = pareto_plot(
            points,
            out / f"{name}-pareto.png",
            title=f"{token}: the beta sweep",
            fidelity_label="recognised (judge: accepted, right category, first in its gallery)",
            alignment_label="alignment (what the prompt states, as the judge reads it)",
        )
        sections.append(
            Section(
                f"{token} ({instance.category}), {path.stat().st_size / 1000:.1f} KB, trained in {seconds:.0f} s",
                f"Sheet {name}.png: the photos, the prior, the verbal oracle, then {token} at each beta "
                f"({len(prompts)} prompts x {len(seeds)} seeds; REC: recognised). Lower beta follows the concept, higher "
                "beta the prompt.",
                table=[{"row": "prior", **point(prior)}, {"row": "verbal oracle", **point(verbal)}]
                + [{"row": f"beta {entry['beta']}", **entry} for entry in sweep],
                plot=plot,
            )
        )
    pair = [(concept.token, instance) for concept, instance, *_ in trained[:2]]
    composition = read_recipe(model).generation.get("composition")
    rates, row = compose(
        pipe, judge, galleries, pair, config.composition_seeds, composition, steps, config.default_beta
    )
    write_sheet(
        out / "composition.png", [row], title="two concepts in one prompt", columns=len(config.composition_seeds) * 2
    )
    summary["composition"] = {**rates, "images": len(row.cells), "mode": composition or "joint"}
    sections.append(
        Section(
            "Composition",
            f"Sheet composition.png: both concepts recognised, each on its own side, in {rates['both_recognised']:.2f}"
            f" of the images; one concept's colour or pattern on the other (BLED) in {rates['bleeding']:.2f} of those"
            " where the judge sees both.",
        )
    )
    summary["seconds"] = time.perf_counter() - started
    summary["config"] = asdict(config)
    atomic_write(out / "summary.json", lambda temporary: Path(temporary).write_text(json.dumps(summary, indent=1)))
    sheets = sorted(path for path in out.glob("*.png") if not path.name.endswith("-pareto.png"))
    sections.append(Section("Contact sheets", rows=[ImageRow(path.name, [(path, "")]) for path in sheets]))
    write_report(out / "report.html", "perfusion demo on the families laboratory", sections)
    log(f"report: {out / 'report.html'} ({summary['seconds'] / 60:.1f} min in all)")
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a families-laboratory pipeline folder")
    parser.add_argument("--judge", type=Path, default=None, help="judge weights (default: the shipped judge)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--quick", action="store_true", help="a smoke-test budget (minutes become seconds)")
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args(argv)
    import torch
    from diffusers import StableDiffusionPipeline

    from perfusion.world.families.judge import Judge

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
    config = quick(LabDemoConfig()) if arguments.quick else LabDemoConfig()
    return run_lab_demo(pipe, judge, arguments.model, arguments.out, config)


if __name__ == "__main__":
    main()
