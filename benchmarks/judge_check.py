"""Does the judge accept what a person accepts and refuse what a person refuses, on generated images?

    python benchmarks/judge_check.py [--concepts old/mycat.safetensors ...] [--prompts 24] [--seeds 2] \
        [--sheet judge-check.png]

1. The base model's own samples of seen objects ("a photo of a large sunflower on the left on a red background"):
   the share the judge accepts (any object), and the share where it names the asked-for object. This bounds every
   "recognised" figure: a concept cannot be recognised more often than the base model's own objects are.
2. For each concept file given (e.g. the failing recipe's), the same prompts with the concept token: the share
   refused (no recognisable object), accepted, and recognised as the concept's object.

Prints the figures and writes a contact sheet with the judge's reading under every image (look at it).
The judge's accuracy on fresh renders and negatives is printed by ``python -m perfusion.world.train_judge
--evaluate-only``.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

from perfusion.concept.format import Concept, ConceptFileError
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import load_concepts, unload_concepts
from perfusion.pipeline.models import open_pipeline
from perfusion.sheets import SheetRow, write_sheet
from perfusion.world import lab_recipe
from perfusion.world.catalog import BACKGROUNDS, POSITIONS, SEEN, SIZES
from perfusion.world.examples import example_concept
from perfusion.world.judge import Judge
from perfusion.world.judge_model import NOTHING
from perfusion.world.metrics import accepted, named_objects, recognised
from perfusion.world.model_path import default_model_path
from perfusion.world.prompts import PromptSpec


def seen_prompts(count: int, seed: int) -> list[tuple[str, PromptSpec]]:
    """(object, prompt spec) pairs: seen objects, one-object scenes, every attribute stated."""
    rng = random.Random(f"judge-check:{seed}")
    return [
        (rng.choice(SEEN), PromptSpec(rng.choice(tuple(BACKGROUNDS)), rng.choice(POSITIONS), rng.choice(SIZES)))
        for _ in range(count)
    ]


def judged_row(pipe, judge, label: str, texts: list[str], objects: list[str], config: GenerationConfig, settings=None):
    """Generate every text, read it with the judge: (counts, sheet row)."""
    counts, cells = {"images": 0, "accepted": 0, "named": 0}, []
    for index, (text, wanted) in enumerate(zip(texts, objects)):
        images = generate(
            pipe, text, replace(config, seed=config.seed + index * config.num_images_per_prompt), settings
        )
        output = judge.run([image.resize((64, 64)) for image in images])
        for row, image in enumerate(images):
            counts["images"] += 1
            counts["accepted"] += accepted(output, row)
            counts["named"] += recognised(output, row, wanted)
            reading = "/".join(name if name != NOTHING else "nothing" for name in named_objects(output, row))
            cells.append((image, f"{wanted} -> {reading}"))
    return counts, SheetRow(label, cells)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", nargs="*", default=[], help="concept files of shipped example concepts")
    parser.add_argument("--model", help="base model folder (default: the embedded micro-world model)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default="judge-check.png")
    args = parser.parse_args(argv)
    if Path(args.sheet).exists():
        sys.exit(f"judge_check: {args.sheet} exists")
    try:
        concepts = [Concept.load(path) for path in args.concepts]
        objects = {concept.token: example_concept(concept.token).object for concept in concepts}
    except ConceptFileError as error:
        sys.exit(f"judge_check: {error}")
    except KeyError as error:
        sys.exit(f"judge_check: {error.args[0]}")
    pipe = open_pipeline(args.model or str(default_model_path()))
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load()
    config = GenerationConfig(
        num_inference_steps=25, guidance_scale=lab_recipe.GUIDANCE, num_images_per_prompt=args.seeds, seed=args.seed
    )
    prompts = seen_prompts(args.prompts, args.seed)
    results, rows = {}, []
    counts, row = judged_row(
        pipe,
        judge,
        "base model, seen objects",
        [spec.text(name) for name, spec in prompts],
        [name for name, _ in prompts],
        config,
    )
    results["base model, seen objects"] = counts
    rows.append(row)
    for concept in concepts:
        load_concepts(pipe, [concept])
        texts = [spec.text(concept.token) for _, spec in prompts]
        counts, row = judged_row(
            pipe,
            judge,
            f"{concept.token} ({Path(args.concepts[concepts.index(concept)]).name})",
            texts,
            [objects[concept.token]] * len(texts),
            config,
        )
        results[concept.token] = counts
        rows.append(row)
        unload_concepts(pipe, concept.token)
    for name, counts in results.items():
        total = counts["images"]
        print(
            f"{name}: accepted {counts['accepted']}/{total} ({counts['accepted'] / total:.0%}), refused "
            f"{total - counts['accepted']}/{total}, named as asked {counts['named']}/{total} ({counts['named'] / total:.0%})"
        )
    write_sheet(args.sheet, rows, "judge check: asked-for object -> what the judge reads", columns=12)
    print(f"contact sheet: {args.sheet}")
    return results


if __name__ == "__main__":
    main()
