"""The `perfusion` command: train, generate, inspect."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import asdict, fields
from pathlib import Path

from transformers import HfArgumentParser

from perfusion.composition.regions import MODES
from perfusion.concept.fingerprint import fingerprints_match, short
from perfusion.concept.format import Concept, ConceptFileError
from perfusion.errors import CommandError
from perfusion.pipeline.generation import GenerationConfig, GenerationError, check_gate, generate
from perfusion.pipeline.models import ModelError, UnsupportedPipelineError, add_model_arguments, open_pipeline
from perfusion.pipeline.tokens import TokenError
from perfusion.recipes import GENERATION_FIELDS, RecipeError, read_recipe
from perfusion.training.images import ImageInputError, load_training_images
from perfusion.training.trainer import TrainingConfig, TrainingError, train_concept

USER_ERRORS = (
    ConceptFileError,
    GenerationError,
    ImageInputError,
    ModelError,
    RecipeError,
    TokenError,
    TrainingError,
    UnsupportedPipelineError,
    FileExistsError,
)


def user_errors() -> tuple[type[Exception], ...]:
    from perfusion.experiments.prompt_sets import PromptFileError
    from perfusion.experiments.sweep import SweepError

    return (*USER_ERRORS, CommandError, PromptFileError, SweepError)


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")


# -- train --------------------------------------------------------------------------------------
def add_train(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a concept from a folder of images", dataclass_types=[TrainingConfig]
    )
    config_names = {item.name for item in fields(TrainingConfig)}
    for action in parser._actions:  # absent unless given: the model's recipe, then the dataclass, fill the rest
        if action.dest in config_names:
            action.default = argparse.SUPPRESS
    add_model_arguments(parser)
    parser.add_argument("--images", required=True, help="folder of 4-8 images of the concept")
    parser.add_argument("--token", required=True, help='the new word, e.g. "<mycat>"')
    parser.add_argument("--supercategory", required=True, help='what it is, e.g. "cat"')
    parser.add_argument("--out", required=True, help="concept file to write (.safetensors)")
    parser.add_argument("--mask-dir", help="masks with the images' file names (white = object)")
    parser.add_argument(
        "--captions",
        help="caption file (one per line) for the covariance, instead of the model folder's or the packaged corpus",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT's checkpoint (OUT.ckpt), writing OUT even if it exists"
    )
    parser.add_argument("--half", action="store_true", help="store fp16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_train)


def training_config(args) -> TrainingConfig:
    """TrainingConfig's defaults, under the model folder's recipe, under the flags given."""
    given = {item.name: getattr(args, item.name) for item in fields(TrainingConfig) if hasattr(args, item.name)}
    recipe = read_recipe(args.model).training
    if "pair_words" in given and "pair_probability" not in given and "pair_probability" not in recipe:
        given["pair_probability"] = 0.5  # --pair-words alone: half the samples paired
    return TrainingConfig(**{**recipe, **given})  # the recipe's values were checked against the fields when read


def finished_run_differs(
    concept: Concept, args, config: TrainingConfig, images: list, fingerprint: str, tensors=lambda: []
) -> str | None:
    """Why a concept file at OUT is not this run, finished (None: it is). A kill that lands once OUT is written and
    its checkpoint removed leaves such a file; anything else there is another run."""
    made = concept.training
    wanted = json.loads(json.dumps(asdict(config)))  # as the file's JSON holds it: tuples as lists
    wanted.pop("checkpoint_every")  # changes nothing in the result
    if config.resolution is None:
        wanted.pop("resolution")  # the file records the size it chose
    for name, given, kept in (
        ("token", args.token, concept.token),
        ("supercategory", args.supercategory, concept.supercategory),
        ("images", len(images), made.get("images")),
        *((name, value, made.get(name)) for name, value in wanted.items()),
    ):
        if given != kept:
            return f"{name} {kept!r}, not {given!r}"
    if not fingerprints_match(concept.base_fingerprint, fingerprint, tensors):
        return "another base model"
    return None


def run_train(args) -> None:
    out = Path(args.out)
    checkpoint = out.with_name(out.name + ".ckpt")
    refuse_existing(out, args.force or args.resume)  # a run killed after writing OUT resumes to the same file
    config = training_config(args)
    images = load_training_images(args.images, args.mask_dir)
    pipe = open_pipeline(args.model, config=args.config)
    pipe.set_progress_bar_config(disable=True)
    if args.resume and not checkpoint.exists() and out.is_file():
        try:
            concept = Concept.load(out)
        except ConceptFileError:
            concept = None  # not a concept file: resuming it is the mistake load_checkpoint names
        if concept is not None:
            from perfusion.pipeline.fingerprint import pipeline_fingerprint, pipeline_tensors

            differs = finished_run_differs(
                concept, args, config, images, pipeline_fingerprint(pipe), lambda: pipeline_tensors(pipe)
            )
            if differs:
                raise CommandError(
                    f"{out}: a finished run with other settings ({differs}), no checkpoint to resume "
                    "(use --force to train again)"
                )
            print(f"{out}: finished already (no checkpoint left), nothing to resume")
            return
    captions = read_captions(args.captions)
    result = train_concept(
        pipe,
        images,
        args.token,
        args.supercategory,
        config,
        checkpoint=checkpoint,
        resume=args.resume,
        captions=captions,
        progress=not args.quiet,
    )
    result.concept.save(out, half=args.half)
    checkpoint.unlink(missing_ok=True)
    print(
        f"{out}: {args.token} ({args.supercategory}), {out.stat().st_size / 1000:.1f} KB, "
        f"{len(images)} images, {config.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1]:.4f}"
    )


def read_captions(path: str | None):
    if path is None:
        return None
    from perfusion.pipeline.corpus import load_captions

    try:
        return load_captions(path)
    except ValueError as error:
        raise CommandError(str(error)) from None


# -- generate ------------------------------------------------------------------------------------
def add_generate(commands) -> None:
    parser = commands.add_parser("generate", help="generate images with one or more concepts")
    add_model_arguments(parser, what="the base model the concepts were trained on")
    parser.add_argument("--concept", action="append", default=[], help="concept file (repeat for several)")
    parser.add_argument("--prompt", required=True, help='e.g. "<mycat> sleeping on a red sofa"')
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument(
        "--beta", type=float, action="append", help="gate bias; once for all concepts or once per concept"
    )
    parser.add_argument("--tau", type=float, action="append", help="gate temperature; once or once per concept")
    add_generation_arguments(parser)
    parser.add_argument("--init-image", help="img2img: start from this image (the pipeline's img2img form)")
    parser.add_argument(
        "--strength", type=float, default=None, help="img2img and inpainting: how much to change (0-1; 0.8)"
    )
    parser.add_argument("--mask-image", help="inpainting: white where --init-image is redrawn")
    parser.add_argument("--out", default="perfusion-out", help="output folder")
    parser.add_argument(
        "--captions", help="caption file for the covariance, instead of the model folder's or the packaged corpus"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing images")
    parser.set_defaults(run=run_generate)


def image_to_image(args) -> dict:
    """img2img or inpainting arguments from --init-image, --strength and --mask-image (checked before the model
    loads), or none."""
    from perfusion.training.images import open_image

    if args.mask_image and not args.init_image:
        raise CommandError("--mask-image needs --init-image (the image it masks)")
    if args.strength is not None and not args.init_image:
        raise CommandError("--strength needs --init-image")
    if not args.init_image:
        return {}
    if hasattr(args, "height") or hasattr(args, "width"):
        raise CommandError("--height and --width do not apply with --init-image: the image's own size is used")
    strength = 0.8 if args.strength is None else args.strength
    if not 0.0 < strength <= 1.0:
        raise CommandError(f"--strength must lie in (0, 1], got {strength}")
    extra = {"image": open_image(Path(args.init_image)).convert("RGB"), "strength": strength}
    if args.mask_image:
        extra["mask_image"] = open_image(Path(args.mask_image)).convert("L")
    return extra


def pipeline_for(pipe, extra: dict):
    """The loaded pipeline, or its img2img or inpainting form on the same components (the concepts act there too)."""
    if not extra:
        return pipe
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    kind = AutoPipelineForInpainting if "mask_image" in extra else AutoPipelineForImage2Image
    try:
        return kind.from_pipe(pipe)
    except ValueError as error:
        raise CommandError(
            f"this pipeline has no {'inpainting' if 'mask_image' in extra else 'img2img'} form ({error})"
        )


# GenerationConfig's fields as flags (diffusers' names, and the short ones earlier versions had); absent unless given,
# so that the model's recipe and then the dataclass fill the rest. ``regions`` is the API's only.
GENERATION_FLAGS = {
    "num_inference_steps": (("--num-inference-steps", "--steps"), dict(type=int, help="denoising steps")),
    "guidance_scale": (
        ("--guidance-scale", "--guidance"),
        dict(type=float, help="classifier-free guidance", default_text="the pipeline's own, 7.5; SDXL 5.0"),
    ),
    "num_images_per_prompt": (("--num-images-per-prompt", "--num-images"), dict(type=int, help="images to make")),
    "seed": (("--seed",), dict(type=int, help="the first image's seed")),
    "global_lock": (
        ("--global-lock",),
        dict(action="store_const", const=True, help="global key locking (suggested beta 0.4-0.6)"),
    ),
    "no_global_lock": (("--no-global-lock",), dict(action="store_const", const=False, help="local key locking")),
    "composition": (
        ("--composition",),
        dict(choices=MODES, help="several concepts: one joint edit (the paper's) or each in its own region"),
    ),
    "height": (
        ("--height",),
        dict(type=int, help="image height in pixels, a multiple of 8", default_text="the pipeline's own"),
    ),
    "width": (
        ("--width",),
        dict(type=int, help="image width in pixels, a multiple of 8", default_text="the pipeline's own"),
    ),
}


def add_generation_arguments(parser) -> None:
    defaults = GenerationConfig()
    for name, (flags, options) in GENERATION_FLAGS.items():
        options, field_name = dict(options), name.removeprefix("no_")  # --no-global-lock sets global_lock too
        source = "the model's recipe, else " if field_name in GENERATION_FIELDS else ""
        default = options.pop("default_text", getattr(defaults, field_name))
        help_text = f"{options.pop('help')} (default: {source}{default})"
        parser.add_argument(*flags, dest=field_name, default=argparse.SUPPRESS, help=help_text, **options)


def generation_config(model, args) -> GenerationConfig:
    """GenerationConfig's defaults, under the model folder's recipe, under the flags given."""
    names = {flag.removeprefix("no_") for flag in GENERATION_FLAGS}  # --no-global-lock sets global_lock
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return GenerationConfig(**{**read_recipe(model).generation, **given})


def per_concept(values: list[float] | None, count: int, name: str) -> list[float | None]:
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise CommandError(f"give --{name} once, or once per concept ({count}), not {len(values)} times")
    return values


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "image"


def run_generate(args) -> None:
    from perfusion.pipeline.loader import load_concepts

    concepts = [Concept.load(path) for path in args.concept]
    betas = per_concept(args.beta, len(concepts), "beta")
    taus = per_concept(args.tau, len(concepts), "tau")
    for beta, tau in zip(betas, taus):
        check_gate(beta, tau)
    config = generation_config(args.model, args)
    extra = image_to_image(args)
    out = Path(args.out)
    names = [out / f"{slug(args.prompt)}-s{config.seed}-{index}.png" for index in range(config.num_images_per_prompt)]
    for path in names:
        refuse_existing(path, args.force)
    pipe = open_pipeline(args.model, config=args.config)
    if concepts:  # by path, so that errors name the file
        load_concepts(pipe, args.concept, captions=read_captions(args.captions), progress=True)
    settings = {concept.token: (beta, tau) for concept, beta, tau in zip(concepts, betas, taus)}
    pipe = pipeline_for(pipe, extra)
    images = generate(pipe, args.prompt, config, settings, negative_prompt=args.negative_prompt, **extra)
    from perfusion.files import save_png

    for image, path in zip(images, names):
        save_png(image, path)
        print(path)


# -- inspect -------------------------------------------------------------------------------------
def add_inspect(commands) -> None:
    parser = commands.add_parser("inspect", help="show a concept file's metadata and sizes")
    parser.add_argument("file")
    parser.set_defaults(run=run_inspect)


def run_inspect(args) -> None:
    concept = Concept.load(args.file)
    tensors = concept.tensors()
    print(f"file            {args.file} ({os.path.getsize(args.file):,} bytes)")
    print(f"token           {concept.token}")
    print(f"supercategory   {concept.supercategory}")
    print(f"default gate    beta {concept.beta}, tau {concept.tau}")
    print(f"base model      {short(concept.base_fingerprint)} (fingerprint {concept.base_fingerprint.split(':')[0]})")
    print(
        f"text encoders   {len(concept.token_embeddings)} (v* widths "
        f"{', '.join(str(vector.numel()) for vector in concept.token_embeddings)})"
    )
    print(f"encoding width  {concept.concept_encoding.numel()}")
    print(
        f"layers          {len(concept.value_targets)} (value targets: "
        f"{sum(t.numel() for t in concept.value_targets.values()):,} numbers)"
    )
    print(f"numbers         {sum(t.numel() for t in tensors.values()):,}")
    for key, value in sorted(concept.training.items()):
        if key != "templates":
            print(f"training.{key:<24} {value}")


# -- entry point ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="perfusion", description="Perfusion personalisation for Stable Diffusion")
    commands = root.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    add_train(commands)
    add_generate(commands)
    add_inspect(commands)
    from perfusion.service.commands import add_serve

    add_serve(commands)
    from perfusion.experiments.commands import add_commands  # sweep, eval, demo: built on the micro world

    add_commands(commands)
    return root


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings as one line each; the libraries' (deprecations, notices) are not the user's concern."""
    if PACKAGE_DIR in Path(filename).resolve().parents:
        print(f"perfusion: warning: {message}", file=sys.stderr)


PACKAGE_DIR = Path(__file__).resolve().parent


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' loading bars and notices (our own progress bars stay)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_libraries()
    shown, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
        args.run(args)
    except user_errors() as error:
        print(f"perfusion: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's side: a full disk, a folder that cannot be written
        where = f"{error.filename}: " if error.filename else ""
        print(f"perfusion: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perfusion: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
