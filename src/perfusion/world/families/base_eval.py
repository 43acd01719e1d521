"""How well a base model knows the families (issue 30's bars), read by the judge on fresh prompts and seeds.

    python -m perfusion.world.families.base_eval --run-dir checkpoints/families [--prompts 64 --seeds 2] [--out DIR]
        [--guidance G] [--judge PATH]

Each prompt is a fresh scene's caption (seeds from EVAL_FIRST_SEED, which training never uses) that names its
attributes more often than training captions do. An attribute word is obeyed when the judge reads it in the image:
a colour or pattern name as named, a shape word's value on its side of 0.5 ("long-tailed": tail > 0.5), the
accessory present. Background, position and size are scored where the prompt states them; the category on every
one-object prompt, and both categories on each side of two-object prompts.

The spread: "a photo of a <category>" drawn 64 times beside 64 renders of the family's own training instances,
both read by the judge, per attribute.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from perfusion.sheets import SheetRow, write_sheet

from .captions import CaptionChoice, describe
from .categories import CATEGORIES, CATEGORY_NAMES, PATTERN_WORDS
from .instances import sample_training_instance
from .judge import Judge, Reading
from .sampling import generate_images, sampling_defaults
from .scenes import photos, render, sample_spec

EVAL_FIRST_SEED = 800_000
# A second prompt set, with its own image seeds, for choosing sampling settings without touching the bars' prompts.
TUNING_FIRST_SEED = 850_000
TUNING_IMAGE_SEEDS_FROM = 100
SPREAD_SAMPLES = 64
NAMING = CaptionChoice(
    colour=0.7,
    pattern=0.7,
    pattern_colour=0.3,
    plain=0.3,
    shape=0.5,
    accessory=0.7,
    pose=0.3,
    family_word=0.0,
    size=0.8,
    position=0.8,
    background=0.9,
    bare=0.0,
)
BARS = {
    "category": 0.90,
    "colour": 0.85,
    "pattern": 0.75,
    "shape": 0.70,
    "background": 0.95,
    "position": 0.85,
    "size": 0.85,
}


def prompt_set(count: int, first_seed: int = EVAL_FIRST_SEED):
    """(spec, caption) pairs, fixed by ``first_seed`` (the bars' EVAL_FIRST_SEED, or TUNING_FIRST_SEED)."""
    prompts = []
    for index in range(count):
        rng = random.Random(first_seed + index)
        spec = sample_spec(rng)
        prompts.append((spec, describe(spec, rng, NAMING)))
    return prompts


def score_image(reading: Reading, row: int, spec, caption) -> dict[str, bool]:
    """Hits of one image, keyed by attribute (only the attributes that apply)."""
    hits = {}
    stated = caption.stated
    if "background" in stated:
        hits["background"] = reading.label("background", row) == spec.background
    if "size" in stated:
        hits["size"] = reading.label("size", row) == spec.size
    if spec.second is not None:
        left, right = (spec.first, spec.second) if spec.position == "left" else (spec.second, spec.first)
        read = (reading.label("left", row), reading.label("right", row))
        truth = (left.instance.category, right.instance.category)
        hits["category"] = read == truth if "position" in stated else sorted(read) == sorted(truth)
        return hits
    instance, placement = spec.first.instance, spec.first
    hits["category"] = reading.accepted(row) and reading.label("category", row) == instance.category
    if "position" in stated:
        hits["position"] = reading.label("position", row) == spec.position
    if "colour" in stated:
        hits["colour"] = reading.label("colour", row) == instance.colour_name
    if "pattern" in stated:
        hits["pattern"] = reading.label("pattern", row) == instance.pattern
    if "pattern_colour" in stated:
        hits["pattern_colour"] = reading.label("second_colour", row) == instance.second_colour_name
    if "accessory" in stated:
        hits["accessory"] = reading.label("accessory", row) is True
    if "pose" in stated:
        hits["pose"] = reading.label("pose", row) == placement.pose
    shape = reading.shape(row, instance.category)
    for key in stated:
        if key.startswith("shape:"):
            name = key.split(":", 1)[1]
            hits[key] = (shape[name] > 0.5) == (instance.shape[name] > 0.5)
    return hits


def pattern_form(spec, caption) -> str | None:
    """How the prompt names its one object's pattern: "adjective" ("a striped cat": before the noun, so that a causal
    text encoder can carry it into the noun), "phrase" ("a cat with black stripes": after it) or "plain" ("a solid
    mug", always before the noun, kept apart so that the other two compare the same patterns); None if unnamed."""
    if "pattern" not in caption.stated or spec.second is not None:
        return None
    if spec.first.instance.pattern == "plain":
        return "plain"
    adjectives = [word for word in PATTERN_WORDS[spec.first.instance.pattern] if not word.startswith("with ")]
    return "adjective" if any(word in caption.text.split() for word in adjectives) else "phrase"


def ceiling(judge: Judge, pairs) -> dict[str, float]:
    """The judge on renders of the prompts' own scenes, scored as the generations are: what a model that drew every
    prompt exactly would score, so that a bar the instrument cannot read shows as such."""
    reading = judge.read([render(spec) for spec, _ in pairs])
    return pooled([score_image(reading, row, spec, caption) for row, (spec, caption) in enumerate(pairs)])


def pooled(hits: list[dict[str, bool]]) -> dict[str, float]:
    """Share of hits per attribute, with every shape word pooled as "shape"."""
    groups: dict[str, list[bool]] = {}
    for image in hits:
        for key, hit in image.items():
            groups.setdefault("shape" if key.startswith("shape:") else key, []).append(hit)
    return {key: float(np.mean(values)) for key, values in sorted(groups.items())}


def spread(judge: Judge, pipe, name: str, generate, samples: int = SPREAD_SAMPLES) -> dict:
    """The judge's reading of "a photo of a <name>" samples beside renders of the family's training instances."""
    rng = random.Random(f"spread/{name}")
    renders = [photos(sample_training_instance(name, rng), 1, seed=index)[0][0] for index in range(samples)]
    drawn = generate([f"a photo of a {name}"], list(range(samples)))
    summary = {}
    for label, images in (("world", renders), ("model", drawn)):
        reading = judge.read(images)
        rows = range(len(images))
        summary[label] = {
            "colour": dict(Counter(reading.label("colour", r) for r in rows)),
            "pattern": dict(Counter(reading.label("pattern", r) for r in rows)),
            "shape_mean": {
                k: float(np.mean([reading.shape(r, name)[k] for r in rows])) for k in CATEGORIES[name].shape_names
            },
            "shape_std": {
                k: float(np.std([reading.shape(r, name)[k] for r in rows])) for k in CATEGORIES[name].shape_names
            },
        }
    for key in ("colour", "pattern"):  # total variation distance between the two histograms
        names = set(summary["world"][key]) | set(summary["model"][key])
        summary[f"{key}_tv"] = 0.5 * sum(
            abs(summary["world"][key].get(n, 0) - summary["model"][key].get(n, 0)) / samples for n in names
        )
    return summary, drawn


def evaluate(
    pipe,
    judge: Judge,
    prompts: int,
    seeds: int,
    out: Path | None,
    steps: int = 25,
    guidance: float | None = None,
    spread_samples: int = SPREAD_SAMPLES,
    tuning: bool = False,
) -> dict:
    """The bars' figures; ``tuning``: on the tuning prompts and image seeds instead (for choosing settings)."""
    steps, guidance = sampling_defaults(steps, guidance)

    def generate(texts, seed_list):
        return generate_images(pipe, texts, seed_list, steps, guidance)

    pairs = prompt_set(prompts, TUNING_FIRST_SEED if tuning else EVAL_FIRST_SEED)
    image_seeds = range(TUNING_IMAGE_SEEDS_FROM, TUNING_IMAGE_SEEDS_FROM + seeds) if tuning else range(seeds)
    images = generate([caption.text for _, caption in pairs], list(image_seeds))
    reading = judge.read(images)
    hits, by_category, cells, rows = [], {}, [], []
    by_form: dict[str, list[bool]] = {}
    for index, (spec, caption) in enumerate(pairs):
        for seed in range(seeds):
            row = index * seeds + seed
            image_hits = score_image(reading, row, spec, caption)
            hits.append(image_hits)
            by_category.setdefault(spec.first.instance.category, []).append(image_hits)
            form = pattern_form(spec, caption)
            if form is not None:
                by_form.setdefault(form, []).append(image_hits["pattern"])
            rows.append({"prompt": caption.text, "seed": image_seeds[seed], "hits": image_hits})
            verdict = (
                "ok" if all(image_hits.values()) else "miss " + ",".join(k for k, v in image_hits.items() if not v)
            )
            cells.append((images[row], f"{verdict} | {caption.text}"))
    results = {
        "pooled": pooled(hits),
        "ceiling": ceiling(judge, pairs),
        "per_category": {name: pooled(h) for name, h in sorted(by_category.items())},
        "pattern_by_form": {
            form: {"obeyed": float(np.mean(v)), "images": len(v)} for form, v in sorted(by_form.items())
        },
        "prompts": prompts,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
    }
    spreads, spread_rows = {}, []
    for name in CATEGORY_NAMES:
        spreads[name], drawn = spread(judge, pipe, name, generate, spread_samples)
        spread_rows.append(SheetRow(f"a photo of a {name}", [(image, "") for image in drawn[:16]]))
    results["spread"] = spreads
    results["images"] = rows
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "base_eval.json").write_text(json.dumps(results, indent=1))
        write_sheet(out / "prompts.png", [SheetRow("prompts", cells)], title="base model on fresh prompts", columns=8)
        write_sheet(out / "spread.png", spread_rows, title="a photo of a <category>: 16 of 64 samples", columns=16)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("lab-report/base"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the base model's)")
    parser.add_argument("--judge", type=Path, default=None, help="judge weights (default: the shipped judge)")
    parser.add_argument(
        "--spread-samples",
        type=int,
        default=SPREAD_SAMPLES,
        help='"a photo of a <category>" samples per category (the spread; fewer for a quick look)',
    )
    parser.add_argument(
        "--tuning",
        action="store_true",
        help="score the tuning prompts and image seeds, not the bars' (to choose sampling settings)",
    )
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.model is not None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    else:
        from perfusion.world.basemodel.model import pipeline_from_checkpoint

        pipe, _ = pipeline_from_checkpoint(arguments.run_dir or Path("checkpoints/families"))
    judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
    results = evaluate(
        pipe,
        judge,
        arguments.prompts,
        arguments.seeds,
        arguments.out,
        guidance=arguments.guidance,
        spread_samples=arguments.spread_samples,
        tuning=arguments.tuning,
    )
    print(json.dumps(results["pooled"], indent=1))


if __name__ == "__main__":
    main()
