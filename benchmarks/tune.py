"""Tune every method by the same protocol, on tuning concepts that are not evaluation concepts (issue 31).

    python benchmarks/tune.py --model DIR --out DIR [--variants perfusion textual-inversion ...]
        [--categories cat dog mug teddy] [--per-category 1] [--rates 0.3 1 3] [--lengths 0.5 1 2]
        [--prompts 6] [--images-per-prompt 2] [--judge PATH] [--threads N] [--resume]

The tuning concepts are members of the families world's reserved part drawn by tuning seeds (0-99,
``evaluation_instance``): never the shipped examples, never the evaluation seeds (1000 and up). Each gets 5 photos
with masks, as an example does. Every variant of benchmarks/compare.py trains on each of them over the same grid:
its learning rate(s) times each --rates value and its length times each --lengths value; each cell is scored at the
variant's default knob by the laboratory's judge on the concept prompts. A variant's choice is the cell with the most
recognised among those whose alignment is at least ALIGNMENT_FLOOR (else the most recognised plus alignment), the
shorter training on a tie. Writes tuned.json (read by ``compare.py --tuned``), grid.csv and each cell's compare
output under --out (cells/<variant>-rate<r>-length<l>/). --resume goes on where a stopped run left off: each cell keeps
what its folder already holds (measured with the same settings) and does only what is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402 (the benchmark next to this one)

ALIGNMENT_FLOOR = 0.85  # issue 31's alignment bar: a recipe that ignores the prompt is not chosen
RATE_FIELDS = {compare.PERFUSION: ("lr_values", "lr_embedding")}  # the baselines: ("lr",)
TUNING_CATEGORIES = ("cat", "dog", "mug", "teddy")


def rate_fields(variant) -> tuple[str, ...]:
    return RATE_FIELDS.get(variant.method, ("lr",))


def tuning_concepts(directory: Path, categories, per_category: int) -> list:
    """Write (once) and list the tuning concepts: reserved members by tuning seeds 0.. per category."""
    from perfusion.world.families.build_examples import write_example
    from perfusion.world.families.instances import evaluation_instance

    if per_category > 100:
        raise SystemExit("error: tuning seeds are 0-99: at most 100 per category")
    wanted = {f"tune-{name}-{seed}": (name, seed) for name in categories for seed in range(per_category)}
    for folder_name, (name, seed) in wanted.items():
        folder = directory / folder_name
        if not (folder / "concept.json").is_file():
            write_example(folder, folder_name, evaluation_instance(name, seed), seed=7000 + seed)
    return [concept for concept in compare.find_concepts(directory) if concept.name in wanted]  # not earlier runs'


def grid_cells(variant, base: dict, rates, lengths) -> list[dict]:
    """Each (rate, length) cell's training overrides: the base settings with its rates and length scaled."""
    config = compare.training_config(variant, base)
    cells = []
    for rate in rates:
        for length in lengths:
            training = {name: getattr(config, name) * rate for name in rate_fields(variant)}
            training["steps"] = max(1, round(config.steps * length))
            cells.append({"rate": rate, "length": length, "training": training})
    return cells


def choose(cells: list[dict]) -> dict:
    """The most recognised cell with alignment >= ALIGNMENT_FLOOR, else the best recognised + alignment; on a tie
    the shorter training."""
    aligned = [cell for cell in cells if cell["alignment"] >= ALIGNMENT_FLOOR]
    if aligned:
        return max(aligned, key=lambda cell: (cell["recognised"], -cell["training"]["steps"]))
    return max(cells, key=lambda cell: (cell["recognised"] + cell["alignment"], -cell["training"]["steps"]))


def tune(concepts, variants, settings, rates, lengths) -> dict:
    out = Path(settings.out)
    results = {}
    for variant in variants:
        base = compare.training_settings(variant, settings)
        cells = grid_cells(variant, base, rates, lengths)
        for cell in cells:
            tried = replace(
                variant,
                training={**variant.training, **cell["training"]},
                sweep=(variant.default,),  # scored at the default knob only
            )
            folder = out / "cells" / f"{variant.name}-rate{cell['rate']:g}-length{cell['length']:g}"
            cell_settings = replace(settings, out=str(folder), compose=False)
            rows, _ = compare.run(concepts, [tried], cell_settings)
            names = {concept.name for concept in concepts}
            rows = [row for row in rows if row.concept in names]  # a resumed cell's folder may hold other concepts
            points = [row.at_default() for row in rows]
            cell["recognised"] = float(np.mean([point["recognised"] for point in points]))
            cell["alignment"] = float(np.mean([point["alignment"] for point in points]))
            cell["train_seconds"] = float(np.mean([row.train_seconds for row in rows]))
            cell["seconds"] = compare.total_seconds(rows, [])  # the cell's whole cost, kept across --resume
            print(
                f"{variant.name:<22} rate x{cell['rate']:g} length x{cell['length']:g}: recognised "
                f"{cell['recognised']:.2f}, alignment {cell['alignment']:.2f}",
                flush=True,
            )
        chosen = choose(cells)
        results[variant.name] = {**chosen, "grid": cells}
    return results


def grid_seconds(results: dict) -> float:
    """The whole grid's cost: training, images and scoring of every cell of every variant."""
    return sum(cell.get("seconds", 0.0) for result in results.values() for cell in result["grid"])


def write(out: Path, results: dict, concepts, command: str) -> None:
    summary = {
        "command": command,
        "concepts": [concept.name for concept in concepts],
        "seconds": grid_seconds(results),
        "variants": results,
    }
    (out / "tuned.json").write_text(json.dumps(summary, indent=1))
    with open(out / "grid.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "rate", "length", "steps", "recognised", "alignment", "train_seconds", "chosen"])
        for name, result in results.items():
            for cell in result["grid"]:
                chosen = (cell["rate"], cell["length"]) == (result["rate"], result["length"])
                writer.writerow(
                    [name, cell["rate"], cell["length"], cell["training"]["steps"], cell["recognised"]]
                    + [cell["alignment"], cell["train_seconds"], chosen]
                )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a families-laboratory pipeline folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", nargs="+", choices=[variant.name for variant in compare.VARIANTS])
    parser.add_argument("--categories", nargs="+", default=list(TUNING_CATEGORIES))
    parser.add_argument("--per-category", type=int, default=1, help="tuning concepts per category (seeds 0..)")
    parser.add_argument("--rates", nargs="+", type=float, default=[0.3, 1.0, 3.0])
    parser.add_argument("--lengths", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--inference-steps", type=int, default=25)
    parser.add_argument("--judge", help="the laboratory's judge weights (default: the shipped judge)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-isolate", action="store_true", help="train in this process")
    parser.add_argument("--resume", action="store_true", help="keep the cells a stopped run finished; do the rest")
    args = parser.parse_args(argv)
    if any(value <= 0 for value in (*args.rates, *args.lengths)):
        raise SystemExit("error: --rates and --lengths must be positive")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    concepts = tuning_concepts(out / "concepts", args.categories, args.per_category)
    command = shlex.join(["python", "benchmarks/tune.py", *(sys.argv[1:] if argv is None else argv)])
    settings = compare.RunSettings(
        model=args.model,
        out=str(out),
        prompts=args.prompts,
        images_per_prompt=args.images_per_prompt,
        inference_steps=args.inference_steps,
        judge=args.judge,
        threads=args.threads,
        isolate=not args.no_isolate,
        command=command,
        resume=args.resume,
    )
    settings = compare.model_generation(settings)  # the model folder's guidance
    variants = compare.chosen_variants(args.variants, quick=True)  # the methods themselves, unless named
    results = tune(concepts, variants, settings, args.rates, args.lengths)
    write(out, results, concepts, command)
    for name, result in results.items():
        print(f"{name}: rate x{result['rate']:g}, length x{result['length']:g} -> {result['training']}")
    print(f"the grid cost {grid_seconds(results) / 60:.1f} min in all (tuned.json: seconds)")
    return results


if __name__ == "__main__":
    main()
