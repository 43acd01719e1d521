"""The experiment verbs of the `perfusion` command: sweep, eval, demo."""

from __future__ import annotations

from pathlib import Path

from perfusion.pipeline.models import add_model_arguments
from perfusion.recipes import read_recipe
from perfusion.training.trainer import TrainingConfig


def add_commands(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="generate a prompt set over a range of beta, score it, plot the Pareto front"
    )
    add_scoring_arguments(sweep)
    sweep.add_argument("--betas", default="0.5:0.9:9", help="start:stop:count or a comma list (default 0.5:0.9:9)")
    sweep.set_defaults(run=run_sweep_command)

    evaluate = commands.add_parser("eval", help="score a concept on a prompt set at one beta")
    add_scoring_arguments(evaluate)
    evaluate.add_argument("--beta", type=float, default=None, help="default: the concept's own")
    evaluate.set_defaults(run=run_eval_command)

    demo = commands.add_parser("demo", help="train, generate, sweep and compose on the embedded micro-world model")
    demo.add_argument("--model", default=None, help="default: the embedded model")
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--steps", type=int, default=None, help="training steps per concept")
    demo.add_argument("--quick", action="store_true", help="a smoke-test budget (minutes become seconds)")
    demo.add_argument("--force", action="store_true", help="write into an existing output folder")
    demo.add_argument("--judge", default=None, help="families laboratory: the judge's weights (default: the shipped)")
    demo.set_defaults(run=run_demo_command)


def add_scoring_arguments(parser) -> None:
    add_model_arguments(parser, what="the base model the concept was trained on")
    parser.add_argument("--concept", required=True, help="concept file")
    parser.add_argument("--prompts", help="prompt file (.txt with {} or .jsonl); default: the micro-world prompt set")
    parser.add_argument(
        "--images", help="the concept's own images (fidelity references); default: the shipped example's"
    )
    parser.add_argument("--object", help="micro-world object name of the concept, for the recognised share")
    parser.add_argument(
        "--clip", help="a local CLIP model folder: score with CLIP-I / CLIP-T instead of the world judge"
    )
    parser.add_argument("--tau", type=float, default=None)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's recipe, else 25")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="default: the model's recipe, else the pipeline's own (7.5; SDXL 5.0)",
    )
    parser.add_argument("--global-lock", action="store_true")
    parser.add_argument(
        "--height", type=int, default=None, help="image height in pixels, a multiple of 8 (default: the pipeline's own)"
    )
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's own)")
    parser.add_argument("--out", required=True, help="output folder (images, metrics.csv, metrics.json, pareto.png)")
    parser.add_argument("--force", action="store_true", help="write into an existing output folder")


def prepare(args, betas):
    """Everything a sweep needs, checked before the model is loaded."""
    from PIL import Image

    from perfusion.concept.format import Concept
    from perfusion.errors import CommandError
    from perfusion.experiments.prompt_sets import read_prompts, world_prompts
    from perfusion.experiments.scoring import ClipScoring, WorldScorer
    from perfusion.experiments.sweep import SweepConfig
    from perfusion.pipeline.generation import GenerationConfig
    from perfusion.training.images import load_training_images

    GenerationConfig(height=args.height, width=args.width)  # a size diffusers would refuse: one line, before the model
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to write into it)")
    concept = Concept.load(args.concept)
    example = matching_example(concept)
    object_name = args.object or (example.object if example else None)
    if args.images:
        references = [item.image for item in load_training_images(args.images)]
    elif example is not None:
        references = [Image.open(path).convert("RGB") for path in example.image_paths()]
    else:
        raise CommandError("--images is needed: the concept's own images, for fidelity")
    if args.prompts:
        prompts = read_prompts(args.prompts, concept.supercategory if args.clip is None else None)
    else:
        prompts = world_prompts(concept.supercategory)
    unstated = [prompt.template for prompt in prompts if prompt.spec is None]
    if args.clip is None and unstated:
        raise CommandError(
            f"{args.prompts}: the world judge scores prompts that state attributes (a .jsonl file, "
            f"not {unstated[0]!r}); give --clip MODEL to score other prompts with CLIP"
        )
    scorer = ClipScoring(args.clip) if args.clip else WorldScorer(object_name)
    recipe = read_recipe(args.model).generation  # the model's own sampling settings, under the flags given
    steps = args.steps if args.steps is not None else recipe.get("num_inference_steps", SweepConfig.steps)
    guidance = args.guidance if args.guidance is not None else recipe.get("guidance_scale", SweepConfig.guidance)
    config = SweepConfig(
        betas=betas,
        tau=args.tau,
        images_per_prompt=args.images_per_prompt,
        seed=args.seed,
        steps=steps,
        guidance=guidance,
        global_lock=args.global_lock or recipe.get("global_lock", False),
        composition=recipe.get("composition", SweepConfig.composition),
        height=args.height,
        width=args.width,
    )
    return out, concept, references, prompts, scorer, config


def matching_example(concept):
    from perfusion.world.examples import example_concepts

    return next(
        (
            example
            for example in example_concepts()
            if example.token == concept.token and example.supercategory == concept.supercategory
        ),
        None,
    )


def run_sweep_command(args) -> None:
    from perfusion.experiments.sweep import parse_betas

    run_scored(args, parse_betas(args.betas))


def run_eval_command(args) -> None:
    run_scored(args, None)


def run_scored(args, betas) -> None:
    from perfusion.experiments.sweep import run_sweep
    from perfusion.pipeline.loader import load_concepts
    from perfusion.pipeline.models import open_pipeline

    out, concept, references, prompts, scorer, config = prepare(args, betas or (0.0,))
    if betas is None:
        config.betas = (concept.beta if args.beta is None else args.beta,)
    pipe = open_pipeline(args.model, config=args.config)
    pipe.set_progress_bar_config(disable=True)
    load_concepts(pipe, args.concept)
    sweep = run_sweep(pipe, concept, prompts, config, scorer, references, out)
    print(
        f"{'beta':>6} {'alignment':>10} {'fidelity':>9} {'recognised':>10} {'accepted':>8}  ({scorer.name}; "
        f"{len(prompts)} prompts x {config.images_per_prompt} images; fidelity over the accepted images)"
    )
    for row in sweep.rows:
        recognised, accepted = ("" if value is None else f"{value:.3f}" for value in (row.recognised, row.accepted))
        print(f"{row.beta:6.3f} {row.alignment:10.3f} {row.fidelity:9.3f} {recognised:>10} {accepted:>8}")
    if sweep.trends:
        print(
            "trend as beta rises (paired over prompts, +- one standard error): "
            + "; ".join(trend.describe() for trend in sweep.trends)
        )
    print(f"{out / 'metrics.csv'}, {out / 'pareto.png'}, {out / 'sheet.png'} (the images behind the figures)")


def run_demo_command(args) -> None:
    from perfusion.experiments.demo import DemoConfig, quick, run_demo
    from perfusion.pipeline.models import ModelError, open_pipeline

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to write into it)")
    if args.model is None:
        from perfusion.world.model_path import default_model_path

        try:
            model = default_model_path()
        except FileNotFoundError as error:
            raise ModelError(str(error)) from None
    else:
        model = args.model
    from perfusion.world.basemodel.export import model_world

    if model_world(model) == "families":
        return run_lab_demo_command(args, Path(model), out)
    config = quick(DemoConfig()) if args.quick else DemoConfig()
    if args.steps is not None:
        config.training = TrainingConfig(**{**config.training.__dict__, "steps": args.steps})
    pipe = open_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    run_demo(pipe, out, config)


def run_lab_demo_command(args, model: Path, out: Path) -> None:
    """The demo on a families-laboratory model (perfusion.experiments.lab_demo)."""
    from dataclasses import replace

    from perfusion.experiments.lab_demo import LabDemoConfig, quick, run_lab_demo
    from perfusion.pipeline.models import open_pipeline
    from perfusion.world.families.judge import Judge

    judge = Judge.load(args.judge) if args.judge else Judge.load()
    config = quick(LabDemoConfig()) if args.quick else LabDemoConfig()
    if args.steps is not None:
        config = replace(config, training={**config.training, "steps": args.steps})
    pipe = open_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    run_lab_demo(pipe, judge, model, out, config)
