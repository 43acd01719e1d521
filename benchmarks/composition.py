"""Why two concepts do or do not compose: each concept alone, beside an ordinary object, and every pair, judged.

    python benchmarks/composition.py --concepts mycat.safetensors mymug.safetensors ... [--model PATH]
        [--object "soccer ball"] [--seeds 4] [--seed 0] [--beta B] [--global-lock] [--composition joint|regions]
        [--out results.json]

For the micro world's example concepts on the embedded model (their objects come from the shipped examples'
concept.json). Every prompt runs on 4 backgrounds x --seeds seeds. A success is an image in which the judge names
exactly the wanted objects: the concept's object alone, the concept's and the ordinary object, or both concepts'
(what compare.py's composition counts). Composition asks each concept to be recognised among *all* objects, which
the single-concept top-1 (within the supercategory) does not; the first block shows how far each concept gets.
Two control blocks ask the base model, without any concept, for two *seen* objects of the same two categories ("a
ginger cat next to a coffee cup"), and for the category words themselves ("a cat next to a cup", and each category
word beside the ordinary object), judged by category: what a concept's locked keys ask the model for.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from perfusion.composition.regions import MODES
from perfusion.concept.format import Concept, ConceptFileError
from perfusion.files import atomic_write
from perfusion.pipeline.generation import GenerationConfig, GenerationError, check_gate, generate
from perfusion.pipeline.loader import load_concepts
from perfusion.pipeline.models import open_pipeline
from perfusion.sheets import SheetRow, write_sheet

BACKGROUNDS = ("red", "blue", "green", "yellow")
TEMPLATE = "a photo of a {} on a {} background"
PAIR_TEMPLATE = "a photo of a {} next to a {} on a {} background"


def judged(pipe, judge, subjects: tuple[str, ...], wanted: list[str], args, read=lambda name: name) -> dict:
    """Images of ``subjects`` (one or two) on every background; how many show exactly ``wanted`` (as ``read`` names
    an object: itself, or its category)."""
    hits, seen, cells = 0, [], []
    settings = {token: (args.beta, None) for token in args.tokens}
    config = GenerationConfig(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.seeds,
        seed=args.seed,
        global_lock=args.global_lock,
        composition=args.composition,
    )
    template = TEMPLATE if len(subjects) == 1 else PAIR_TEMPLATE
    for background in BACKGROUNDS:
        prompt = template.format(*subjects, background)
        images = generate(pipe, prompt, config, settings=settings)
        for image, verdict in zip(images, judge.predict(images)):
            named = sorted(map(read, verdict.present)) if verdict.count == len(wanted) else []
            hit = named == sorted(map(read, wanted))
            hits += hit
            seen.append("/".join(verdict.present))
            cells.append((image, f"{background}: {'/'.join(verdict.present) or 'nothing'}{' OK' if hit else ''}"))
    return dict(prompt=template.format(*subjects, "{}"), hits=hits, images=len(seen), seen=seen, cells=cells)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", nargs="+", required=True, help="concept files of the shipped example concepts")
    parser.add_argument("--model", help="base model folder (default: the embedded micro-world model)")
    parser.add_argument("--object", default="soccer ball", help="the ordinary (seen) object beside each concept")
    parser.add_argument("--seeds", type=int, default=4, help="images per background (4 backgrounds)")
    parser.add_argument("--seed", type=int, default=0, help="each prompt's first seed (its images use the next ones)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--beta", type=float, help="every concept's beta (default: each file's own)")
    parser.add_argument("--global-lock", action="store_true", help="global key locking (docs/method.md)")
    parser.add_argument("--composition", choices=MODES, help="two concepts: joint edit or regions (default: recipe's)")
    parser.add_argument("--out", help="write the counts and every verdict here (JSON)")
    parser.add_argument(
        "--sheet", help="contact sheet of every image judged (PNG; default: beside --out, else composition-sheet.png)"
    )
    args = parser.parse_args(argv)
    from perfusion.world import lab_recipe
    from perfusion.world.catalog import OBJECTS, members
    from perfusion.world.examples import example_concept
    from perfusion.world.judge import Judge
    from perfusion.world.model_path import default_model_path

    args.guidance = lab_recipe.GUIDANCE
    args.composition = args.composition or lab_recipe.COMPOSITION
    if args.object not in OBJECTS:
        sys.exit(f"composition: {args.object!r} is not a micro-world object")
    args.sheet = args.sheet or (str(Path(args.out).with_suffix(".png")) if args.out else "composition-sheet.png")
    for path in (args.out, args.sheet):
        if path and Path(path).exists():
            sys.exit(f"composition: {path} exists")
    try:
        check_gate(args.beta, None)
    except GenerationError as error:
        sys.exit(f"composition: {error}")
    try:
        concepts = [Concept.load(path) for path in args.concepts]
        objects = {concept.token: example_concept(concept.token).object for concept in concepts}
        pipe = open_pipeline(args.model or str(default_model_path()))
        load_concepts(pipe, concepts)
    except (ConceptFileError, OSError) as error:
        sys.exit(f"composition: {error}")
    except KeyError as error:  # not an example concept: no world object to judge it by
        sys.exit(f"composition: {error.args[0]}")
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load()
    tokens = args.tokens = [concept.token for concept in concepts]
    blocks: dict[str, list[dict]] = {
        "alone": [],
        "beside an object": [],
        "pairs": [],
        "control: seen objects": [],
        "control: category words": [],
    }
    category = {token: OBJECTS[objects[token]].category for token in tokens}

    def by_category(name: str) -> str:
        return OBJECTS[name].category

    for token in tokens:
        blocks["alone"].append(judged(pipe, judge, (token,), [objects[token]], args))
        beside = judged(pipe, judge, (token, args.object), [objects[token], args.object], args)
        blocks["beside an object"].append(beside)
        words = judged(pipe, judge, (category[token], args.object), [objects[token], args.object], args, by_category)
        blocks["control: category words"].append(words)
    for first, second in itertools.combinations(tokens, 2):
        blocks["pairs"].append(judged(pipe, judge, (first, second), [objects[first], objects[second]], args))
        seen = [members(category[token], include_held_out=False)[0] for token in (first, second)]
        blocks["control: seen objects"].append(judged(pipe, judge, tuple(seen), seen, args))
        words = judged(
            pipe, judge, (category[first], category[second]), [objects[first], objects[second]], args, by_category
        )
        blocks["control: category words"].append(words)
    sheet_rows = [
        SheetRow(f"{name}: {result['prompt']} ({result['hits']} of {result['images']})", result.pop("cells"))
        for name, results in blocks.items()
        for result in results
    ]
    write_sheet(args.sheet, sheet_rows, "composition benchmark: what the judge names in each image")
    print(f"contact sheet: {args.sheet}")
    for name, results in blocks.items():
        total = sum(result["hits"] for result in results)
        print(f"{name}: {total} of {sum(result['images'] for result in results)}")
        for result in results:
            print(f"  {result['hits']:3d} of {result['images']}  {result['prompt']}")
    report = dict(
        concepts=args.concepts,
        model=args.model,
        beta=args.beta,
        global_lock=args.global_lock,
        composition=args.composition,
        seeds=args.seeds,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        blocks=blocks,
    )
    if args.out:
        atomic_write(args.out, lambda path: path.write_text(json.dumps(report, indent=1)))
    return report


if __name__ == "__main__":
    main()
