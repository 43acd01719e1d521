"""Perfusion against Textual Inversion, DreamBooth, LoRA (rank 4 and 16) and Custom Diffusion, side by side.

    python benchmarks/compare.py --out benchmarks/results/compare [--model PATH] [--concepts DIR] [--quick]
        [--variants perfusion lora-r4 ...] [--steps N] [--threads N] [--no-isolate] [--update | --resume]
        [--composition joint|regions] [--compositions-only]

For every concept folder (images, optional masks/, concept.json with token, supercategory and, for the micro
world's judge, object) and every variant: train on the same images in a fresh process (peak memory, and the
training time with the set-up included: latents, class images),
save what a user would ship (its size), then on a fresh pipeline generate the evaluation prompts over the
variant's knob sweep (Perfusion: beta; LoRA and Custom Diffusion: scale, past 1; Textual Inversion and
DreamBooth: training length, from snapshots of one run) with the same seeds, and score fidelity and alignment. Writes results.json, table.csv (each variant at
its default setting), sweep.csv, pareto_<concept>.png and composition.csv (two concepts in one image, for the
methods that can load two: Perfusion, Textual Inversion, LoRA; on families concepts also "bleeding", one concept's
colour or pattern on the other) under --out. Perfusion composes with the recipe's
mode (regional composition) unless --composition says otherwise; --compositions-only redoes just those images
from the concept files an earlier run left in --out/artifacts.

Scoring (``make_scorer``, perfusion.experiments.scoring): CLIP-I/CLIP-T with --clip PATH; else, for a families
concept (its concept.json holds the instance), the families laboratory's judge (--judge PATH) on the concept prompts
(DreamBench's mix): recognised, attribute match (the "fidelity" column) and alignment, with both concepts recognised
for composition; else the micro world's judge when its weights and the concept's catalog object exist; otherwise a
clearly labelled pixel placeholder, so the runner also works end to end on a tiny random pipeline. On a families
model (basemodel.json says so) the default concepts are the families examples. Perfusion trains with the model
folder's recipe (perfusion_recipe.json) under each variant's changes.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from perfusion import baselines
from perfusion.baselines.measure import run_isolated
from perfusion.composition.regions import MODES
from perfusion.experiments.prompt_sets import EvalPrompt, family_prompts, read_prompts, world_prompts
from perfusion.experiments.scoring import ClipScoring, FamiliesScorer, Scores, WorldScorer
from perfusion.experiments.trend import sweep_trends
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import load_concepts
from perfusion.pipeline.models import open_pipeline
from perfusion.recipes import read_recipe
from perfusion.sheets import SheetRow, prompt_cells, write_sheet
from perfusion.training.images import load_training_images
from perfusion.training.trainer import TrainingConfig, train_concept
from perfusion.world import lab_recipe

PERFUSION = "perfusion"


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a method, its training settings, and the knob it sweeps at generation."""

    name: str
    method: str  # "perfusion" or a name in perfusion.baselines.METHOD_MODULES
    training: dict  # overrides of the method's config (on top of the model folder's recipe for Perfusion, of
    # ``for_small_model`` for the baselines)
    knob: str  # "beta", "scale" (LoRA, Custom Diffusion) or "steps" (fractions of the training's length)
    sweep: tuple[float, ...]
    default: float  # the knob's value for the table
    role: str = "method"  # "method": as the method comes; "ablation": one change to it; "candidate": another recipe
    needs_masks: bool = False  # what it changes needs the photos' masks (paired images): not run on --inputs photos


# Settings for the embedded micro-world model: Perfusion's are measured (perfusion.world.lab_recipe); the baselines' are
# starting points scaled to the model, not tuned.
LENGTH_SWEEP = (0.25, 0.5, 0.75, 1.0)  # knob "steps": fractions of the training's length (saved snapshots)
SCALE_SWEEP = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
VARIANTS = (
    Variant(PERFUSION, PERFUSION, {}, "beta", (0.5, 0.6, 0.7, 0.8, 0.9), 0.7),
    # The same without paired images (perfusion.training.pairs): what "<token> next to a <word>" training adds.
    Variant(
        "perfusion-no-pairs",
        PERFUSION,
        dict(pair_probability=0.0),
        "beta",
        (0.5, 0.6, 0.7, 0.8, 0.9),
        0.7,
        "ablation",
        needs_masks=True,
    ),
    # The same with the o*_V rate the earlier (epsilon-prediction) embedded models needed, 10x below SD1.5's.
    Variant(
        "perfusion-3e-3",
        PERFUSION,
        dict(lr_values=lab_recipe.EARLIER_LR_VALUES),
        "beta",
        (0.5, 0.6, 0.7, 0.8, 0.9),
        0.7,
        "candidate",
    ),
    # The same with SD1.5's rate for v* (6e-3, the recipe until commit 424d60f): v* ends at 2-3x a word embedding's
    # norm instead of near it, and the identity rides on v* more than on the gated o*_V.
    Variant(
        "perfusion-v-6e-3",
        PERFUSION,
        dict(lr_embedding=TrainingConfig.lr_embedding),
        "beta",
        (0.5, 0.6, 0.7, 0.8, 0.9),
        0.7,
        "candidate",
    ),
    # Every training sample a paired image (the recipe: half): better <mybird>, worse <mycat>, pairs 82 of 192 in
    # benchmarks/composition.py against the recipe's 79 (docs/history.md, "Two concepts in one prompt").
    Variant(
        "perfusion-pairs-only",
        PERFUSION,
        dict(pair_probability=1.0),
        "beta",
        (0.5, 0.6, 0.7, 0.8, 0.9),
        0.7,
        "candidate",
        needs_masks=True,
    ),
    # Textual Inversion's and DreamBooth's knob is training length: one run, its artifact kept at fractions of it.
    Variant("textual-inversion", "textual-inversion", {}, "steps", LENGTH_SWEEP, 1.0),
    # Textual Inversion at Perfusion's learning rate for v*: how much of Perfusion's result v* alone gives.
    Variant(
        "textual-inversion-6e-3",
        "textual-inversion",
        dict(lr=TrainingConfig.lr_embedding),
        "steps",
        LENGTH_SWEEP,
        1.0,
        "ablation",
    ),
    Variant("dreambooth", "dreambooth", {}, "steps", LENGTH_SWEEP, 1.0),
    # The scales go past 1.0: a method's knob may need more of it than training gave.
    Variant("lora-r4", "lora", dict(rank=4), "scale", SCALE_SWEEP, 1.0),
    Variant("lora-r16", "lora", dict(rank=16), "scale", SCALE_SWEEP, 1.0),
    Variant("custom-diffusion", "custom-diffusion", {}, "scale", SCALE_SWEEP, 1.0),
)
# Without --variants: the methods and their ablations (the committed full runs); --quick: the methods alone, so that
# it stays under 20 minutes on the 2 cores. Candidates run only when named.
DEFAULT_ROLES = ("method", "ablation")
QUICK_ROLES = ("method",)
QUICK_TRAINING = dict(steps=30, num_class_images=8, class_inference_steps=10)  # --quick: every method, same budget
QUICK_SWEEP = 3  # --quick: knob values kept (the sweep's ends and the default)


# What every method is given, the same for all: "photos" (a user's usual case; Perfusion then reads its own attention
# masks and trains without paired images, which need masks) or "masks" (the photos with their masks; every baseline
# then weighs its loss by them, as Perfusion does).
INPUTS = ("photos", "masks")


@dataclass
class RunSettings:
    model: str
    out: str
    quick: bool = False
    steps: int | None = None  # every method's training steps (overrides the variant's)
    # Every method's budget in training images seen (steps = images / images per step): equal steps are not equal
    # training when Perfusion takes 16 images a step and DreamBooth 1. Overrides --steps.
    images: int | None = None
    prompts: int = 12  # evaluation prompts per concept
    prompts_file: str | None = None  # .txt or .jsonl (perfusion.experiments.prompt_sets); default: the world's prompts
    clip: str | None = None  # a local CLIP folder: score with CLIP-I / CLIP-T instead of the world judge
    judge: str | None = None  # families laboratory: the judge's weights (default: the shipped judge)
    images_per_prompt: int = 2
    composition_images_per_prompt: int = 8  # per composition template (two templates): 16 images per method
    inference_steps: int = 25
    guidance: float | None = None  # every variant samples at it; None: the model folder's recipe (model_generation)
    seed: int = 0
    threads: int | None = None
    isolate: bool = True  # train in a fresh process (peak memory); off: in this process, no memory figure
    command: str = ""  # the command line that produced the results (written into results.json)
    update: bool = False  # keep --out's earlier rows and compositions for what this run does not redo
    resume: bool = False  # go on where a stopped run left off: keep --out's rows and skip what they already hold
    composition: str | None = None  # how Perfusion composes two concepts: "joint" (the paper's) or "regions"; None:
    # the model folder's recipe
    compositions_only: bool = False  # redo the compositions from --out's artifacts; keep every row (implies update)
    compose: bool = True  # off: no two-concept images (benchmarks/tune.py scores single concepts only)
    tuned: str | None = None  # a tune.py result (tuned.json): each variant trains with its chosen rate and length
    inputs: str = "photos"  # what every method trains on (INPUTS)

    def quickened(self) -> RunSettings:
        return replace(
            self,
            prompts=min(self.prompts, 4),
            images_per_prompt=1,
            composition_images_per_prompt=1,
            inference_steps=min(self.inference_steps, 10),
        )


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    token: str
    supercategory: str
    directory: str
    object: str | None = None  # the micro world's catalog name, for the judge's identity scores
    instance: dict | None = None  # a families-laboratory concept's instance (Instance.to_dict), for its judge

    @property
    def mask_dir(self) -> str | None:
        masks = Path(self.directory) / "masks"
        return str(masks) if masks.is_dir() else None


def model_generation(settings: RunSettings) -> RunSettings:
    """The run's guidance and composition, from the model folder's recipe where not given (else the embedded
    models' sampling guidance and regional composition)."""
    from perfusion.world.basemodel.config import SamplingConfig

    recipe = read_recipe(settings.model).generation
    return replace(
        settings,
        guidance=recipe.get("guidance_scale", SamplingConfig.guidance_scale)
        if settings.guidance is None
        else settings.guidance,
        composition=recipe.get("composition", "regions") if settings.composition is None else settings.composition,
    )


def find_concepts(directory: Path) -> list[ConceptSpec]:
    concepts = []
    for meta_path in sorted(directory.glob("*/concept.json")):
        meta = json.loads(meta_path.read_text())
        concepts.append(
            ConceptSpec(
                meta_path.parent.name,
                meta["token"],
                meta["supercategory"],
                str(meta_path.parent),
                meta.get("object"),
                meta.get("instance"),
            )
        )
    if not concepts:
        raise SystemExit(f"{directory}: no concept folders (*/concept.json)")
    return concepts


def tuned_training(settings: RunSettings, variant: Variant) -> dict:
    """The training changes benchmarks/tune.py chose for this variant ({} without --tuned or for an untuned one)."""
    if not settings.tuned:
        return {}
    chosen = json.loads(Path(settings.tuned).read_text())["variants"]
    return chosen.get(variant.name, {}).get("training", {})


def training_settings(variant: Variant, settings: RunSettings) -> dict:
    """The variant's training overrides for this run; the baselines' class images (prior preservation) are made at
    the guidance the run samples with (the model's own, not SD1.5's 7.5)."""
    tuned = tuned_training(settings, variant)
    if variant.method == PERFUSION:
        overrides = {**read_recipe(settings.model).training, **variant.training, **tuned}
    else:
        overrides = {"class_guidance": settings.guidance, **variant.training, **tuned}
    if settings.quick:
        overrides.update(QUICK_TRAINING if variant.method != PERFUSION else {"steps": QUICK_TRAINING["steps"]})
    if settings.steps is not None:
        overrides["steps"] = settings.steps
    if settings.images is not None:
        overrides["steps"] = max(1, math.ceil(settings.images / images_per_step(variant, overrides)))
    return overrides


def training_config(variant: Variant, overrides: dict):
    """The config a variant trains with: Perfusion's TrainingConfig, or the baseline's ``for_small_model``."""
    if variant.method == PERFUSION:
        return TrainingConfig(**overrides)
    return baselines.method(variant.method).CONFIG.for_small_model(**overrides)


def images_per_step(variant: Variant, overrides: dict) -> int:
    """Training images one optimizer step sees (micro-batch x accumulation; prior-preservation images not counted)."""
    config = training_config(variant, overrides)
    return config.batch_size * config.gradient_accumulation


def class_images_per_step(variant: Variant, overrides: dict) -> int:
    """The base model's own class images one optimizer step also fits (prior preservation: one per concept image)."""
    if variant.method == PERFUSION or not training_config(variant, overrides).prior_preservation:
        return 0
    return images_per_step(variant, overrides)


def chosen_variants(names: list[str] | None, quick: bool) -> list[Variant]:
    """The named variants, else every one whose role the run's mode includes (in VARIANTS order)."""
    if names:
        return [variant for variant in VARIANTS if variant.name in names]
    return [variant for variant in VARIANTS if variant.role in (QUICK_ROLES if quick else DEFAULT_ROLES)]


def sweep_values(variant: Variant, quick: bool) -> list[float]:
    """The variant's knob values; --quick: the sweep's ends and the default (QUICK_SWEEP values)."""
    values = list(variant.sweep)
    if quick and len(values) > QUICK_SWEEP:
        picks = {values[0], variant.default, values[-1]}
        if len(picks) < QUICK_SWEEP:  # the default is an end: the middle value too
            picks.add(values[len(values) // 2])
        values = sorted(picks)
    return values


def snapshot_steps(variant: Variant, steps: int, quick: bool) -> dict[float, int]:
    """Knob "steps": each swept fraction of the training below 1 -> the optimizer step its snapshot is kept at."""
    if variant.knob != "steps":
        return {}
    return {value: max(1, round(value * steps)) for value in sweep_values(variant, quick) if value < 1}


def snapshot_path(artifact: Path, value: float) -> Path:
    """The artifact as it stood at a fraction of the training (the final one at 1)."""
    artifact = Path(artifact)
    return artifact if value >= 1 else artifact.with_name(f"{artifact.stem}-at{value:g}{artifact.suffix}")


# -- training (runs in a fresh process) ----------------------------------------------------------------------
def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_job(model: str, concept: ConceptSpec, threads: int | None) -> None:
    """What every training job does before it trains (imports included): its peak is the table's memory baseline."""
    for name in baselines.METHOD_MODULES:
        baselines.method(name)
    set_threads(threads)
    open_pipeline(model, half=False)
    load_training_images(concept.directory, concept.mask_dir)


def training_images(concept: ConceptSpec, inputs: str) -> list:
    """The concept's photos; with their masks only when the run's inputs are "masks" (INPUTS)."""
    images = load_training_images(concept.directory, concept.mask_dir)
    return images if inputs == "masks" else [replace(image, mask=None) for image in images]


def train_job(
    model: str,
    concept: ConceptSpec,
    variant: Variant,
    overrides: dict,
    artifact: str,
    threads: int | None,
    inputs: str = "photos",
    snapshots: dict[float, int] | None = None,
) -> dict:
    """Train one variant on one concept and save what it ships (and, for ``snapshots``, swept fraction of the
    training -> optimizer step, the artifact as it stood then; written as they come, their time not counted)."""
    set_threads(threads)
    pipe = open_pipeline(model, half=False)  # trained in fp32 (mixed precision is a config setting)
    pipe.set_progress_bar_config(disable=True)
    images = training_images(concept, inputs)
    if variant.method != PERFUSION:  # a baseline weighs its loss by the masks whenever it is given them
        overrides = {**overrides, "use_masks": all(image.mask is not None for image in images)}
    if variant.method == PERFUSION:
        result = train_concept(
            pipe, images, concept.token, concept.supercategory, training_config(variant, overrides), progress=False
        )
        result.concept.save(artifact)
        seconds, steps, losses = result.seconds, result.concept.training["steps"], result.losses
    else:
        from safetensors.torch import load_file, save_file

        module = baselines.method(variant.method)
        kept_steps = tuple(sorted(set((snapshots or {}).values())))  # the one source of the snapshots' steps
        config = training_config(variant, {**overrides, "snapshot_steps": kept_steps})
        kept = Path(artifact).with_suffix(".step{}.tmp")

        def keep(step: int, tensors: dict) -> None:  # on disk, not in memory (DreamBooth's are whole UNets)
            save_file(tensors, str(kept).format(step))

        result = module.train(
            pipe, images, concept.token, concept.supercategory, config, progress=False, on_snapshot=keep
        )
        baselines.save(result, artifact)
        for value, step in (snapshots or {}).items():
            tensors = load_file(str(kept).format(step))
            baselines.save(baselines.snapshot_result(result, step, tensors), snapshot_path(artifact, value))
        for step in config.snapshot_steps:
            Path(str(kept).format(step)).unlink(missing_ok=True)
        seconds, steps, losses = result.seconds, result.steps, result.losses
    seen, class_seen = steps * images_per_step(variant, overrides), steps * class_images_per_step(variant, overrides)
    size = Path(artifact).stat().st_size
    return dict(
        seconds=seconds, steps=steps, images_seen=seen, class_images_seen=class_seen, losses=losses, size_bytes=size
    )


def train(model: str, concept: ConceptSpec, variant: Variant, settings: RunSettings, artifact: Path) -> dict:
    overrides = training_settings(variant, settings)
    snapshots = snapshot_steps(variant, training_config(variant, overrides).steps, settings.quick)
    args = (model, concept, variant, overrides, str(artifact), settings.threads, settings.inputs, snapshots)
    if not settings.isolate:
        return {**train_job(*args), "peak_rss_bytes": None, "peak_gpu_bytes": None}
    measured = run_isolated(train_job, *args)
    return {**measured.value, "peak_rss_bytes": measured.peak_rss_bytes, "peak_gpu_bytes": measured.peak_gpu_bytes}


# -- generation --------------------------------------------------------------------------------------------------
def evaluation_prompts(concept: ConceptSpec, settings: RunSettings) -> list[EvalPrompt]:
    """A --prompts-file; else a families concept's prompts (DreamBench's mix); else the micro world's standard
    prompts for the concept's category."""
    if settings.prompts_file:
        return read_prompts(settings.prompts_file, concept.supercategory)[: settings.prompts]
    if concept.instance is not None:
        return list(family_prompts(family_instance(concept), settings.prompts))
    return world_prompts(concept.supercategory, settings.prompts, settings.seed)


def family_instance(concept: ConceptSpec):
    from perfusion.world.families.instances import Instance

    return Instance.from_dict(concept.instance)


def fresh_pipeline(model: str):
    pipe = open_pipeline(model, half=False)  # trained in fp32 (mixed precision is a config setting)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_sweep(model, concept, variant, artifact, prompts, settings) -> dict[float, dict[EvalPrompt, list]]:
    """Images per knob value and prompt, with the same seeds for every variant (knob "steps": each value on a fresh
    pipeline with that snapshot)."""
    pipe = None
    images = {}
    for value in sweep_values(variant, settings.quick):
        if pipe is None or variant.knob == "steps":
            path = snapshot_path(artifact, value) if variant.knob == "steps" else artifact
            pipe, to_prompt, set_strength = personalised_pipeline(model, variant, path)
        config = GenerationConfig(
            num_inference_steps=settings.inference_steps,
            guidance_scale=settings.guidance,
            num_images_per_prompt=settings.images_per_prompt,
            seed=settings.seed,
        )
        gate = {concept.token: (value, None)} if variant.knob == "beta" else None
        if variant.knob == "scale":
            set_strength(value)
        images[value] = {
            prompt: generate(pipe, to_prompt(prompt.text(concept.token)), config, settings=gate) for prompt in prompts
        }
    return images


def personalised_pipeline(model: str, variant: Variant, artifact: Path):
    """A fresh pipeline with the artifact applied: (pipe, prompt rewriting, strength setter or None)."""
    pipe = fresh_pipeline(model)
    if variant.method == PERFUSION:
        load_concepts(pipe, artifact)
        return pipe, (lambda text: text), None
    handle = baselines.method(variant.method).apply(pipe, artifact)
    return pipe, handle.prompt, handle.set_strength


# -- scoring: the one place to plug metrics in -------------------------------------------------------------
AXES = {  # Pareto chart axis labels per scorer
    "world judge": dict(
        fidelity_label="identity fidelity (judge embedding cosine)",
        alignment_label="text alignment (share of stated attributes)",
    ),
    "CLIP": dict(fidelity_label="CLIP-I (image-image)", alignment_label="CLIP-T (image-text, supercategory prompt)"),
    "families judge": dict(
        fidelity_label="recognised (judge: accepted, right category, first in its gallery)",
        alignment_label="alignment (what the prompt states, as the judge reads it)",
    ),
    "pixel placeholder": dict(
        fidelity_label="PLACEHOLDER fidelity (thumbnail cosine to the photos)",
        alignment_label="PLACEHOLDER alignment (thumbnail cosine to the base image)",
    ),
}


class PixelScorer:
    """PLACEHOLDER when neither the judge nor CLIP can score (no judge weights, a concept outside the micro world):
    fidelity is the cosine of 16x16 thumbnails to the nearest concept photo, alignment the cosine to the base
    model's own image for the prompt with the supercategory in place of the concept (same seed). Smoke tests only."""

    name = "pixel placeholder"
    side = 16

    def __init__(self, base_images: dict[EvalPrompt, list]):
        self.base = {prompt: self.thumbnails(batch) for prompt, batch in base_images.items()}

    @classmethod
    def thumbnails(cls, images) -> torch.Tensor:
        rows = [
            np.asarray(image.convert("RGB").resize((cls.side, cls.side)), dtype=np.float32).ravel() / 127.5 - 1
            for image in images
        ]
        return torch.nn.functional.normalize(torch.from_numpy(np.stack(rows)), dim=-1)

    def score(self, images_by_prompt: dict[EvalPrompt, list], references: list, supercategory: str) -> Scores:
        references = self.thumbnails(references)
        fidelity, alignment = [], []
        for prompt, batch in images_by_prompt.items():
            generated = self.thumbnails(batch)
            fidelity.append(float((generated @ references.T).max(-1).values.mean()))
            alignment.append(float((generated * self.base[prompt]).sum(-1).mean()))
        return Scores.from_prompts(alignment, fidelity)


def world_judge(concepts: list[ConceptSpec], prompts: list[EvalPrompt], object_name: str | None = None):
    """(the micro world's judge, None) when it can score these concepts and prompts, else (None, why not)."""
    from perfusion.world.catalog import OBJECTS

    unknown = [concept.name for concept in concepts if concept.object not in OBJECTS]
    if unknown:
        return None, f"{unknown[0]} is not a micro-world object"
    if any(prompt.spec is None for prompt in prompts):
        return None, "the prompts state no micro-world attributes"
    try:
        return WorldScorer(object_name), None
    except FileNotFoundError as error:
        return None, str(error)


def make_scorer(model: str, concept: ConceptSpec, prompts: list[EvalPrompt], settings: RunSettings):
    """CLIP with --clip; else the world judge when it can score this concept; else the placeholder (noted on stderr)."""
    if settings.clip:
        return ClipScoring(settings.clip)
    if concept.instance is not None and not settings.prompts_file:
        instance = family_instance(concept)
        return FamiliesScorer(instance, family_prompts(instance, settings.prompts), families_judge(settings))
    scorer, reason = world_judge([concept], prompts, concept.object)
    if scorer is not None:
        return scorer
    print(f"note: scoring {concept.name} with the pixel placeholder ({reason})", file=sys.stderr)
    pipe = fresh_pipeline(model)
    config = GenerationConfig(
        num_inference_steps=settings.inference_steps,
        guidance_scale=settings.guidance,
        num_images_per_prompt=settings.images_per_prompt,
        seed=settings.seed,
    )
    return PixelScorer({prompt: generate(pipe, prompt.text(concept.supercategory), config) for prompt in prompts})


def families_judge(settings: RunSettings):
    """The families laboratory's judge (--judge, else the shipped one), loaded once per run."""
    from perfusion.world.families.judge import JUDGE_PATH, Judge

    path = settings.judge or JUDGE_PATH
    if path not in _JUDGES:
        _JUDGES[path] = Judge.load(path)
    return _JUDGES[path]


_JUDGES: dict = {}


def references(concept: ConceptSpec) -> list:
    return [image.image for image in load_training_images(concept.directory, concept.mask_dir)]


# -- two concepts in one image ------------------------------------------------------------------------------
COMPOSITION_TEMPLATES = ("a photo of a {} next to a {}", "a photo of a {} to the left of a {}")
# Perfusion, TI and LoRA load two separately trained concepts into one pipeline (every variant of those methods).
# Custom Diffusion combines concepts by a joint optimisation of their K/V (not run here) and DreamBooth not at all:
# they get no composition figure.
COMPOSABLE = (PERFUSION, "textual-inversion", "lora")


def composition_mode(variant: Variant, settings: RunSettings) -> str | None:
    """How a variant composes two concepts: the run's mode for Perfusion; the other methods have none."""
    return settings.composition if variant.method == PERFUSION else None


def pair_prompts(pair: tuple[ConceptSpec, ConceptSpec]) -> list[str]:
    """The two-concept prompts: the families laboratory's own (its demo's) for families concepts."""
    if all(concept.instance is not None for concept in pair):
        from perfusion.world.families.concept_prompts import pair_texts

        return pair_texts([concept.token for concept in pair])
    return [template.format(*(concept.token for concept in pair)) for template in COMPOSITION_TEMPLATES]


def composition_images(model: str, pair: tuple[ConceptSpec, ConceptSpec], variant: Variant, artifacts, settings):
    """Both concepts loaded at the variant's default setting; every template, the same seeds for every variant."""
    pipe = fresh_pipeline(model)
    gate = None
    if variant.method == PERFUSION:
        load_concepts(pipe, [str(path) for path in artifacts])
        gate = {concept.token: (variant.default, None) for concept in pair}
        phrases = []
    else:
        module = baselines.method(variant.method)
        phrases = [module.apply(pipe, path) for path in artifacts]
        if variant.method == "lora":
            pipe.set_adapters(
                [module.adapter_name(concept.token) for concept in pair], adapter_weights=[variant.default] * 2
            )
    config = GenerationConfig(
        num_inference_steps=settings.inference_steps,
        guidance_scale=settings.guidance,
        composition=composition_mode(variant, settings),
        num_images_per_prompt=settings.composition_images_per_prompt,
        seed=settings.seed,
    )
    images = []
    for prompt in pair_prompts(pair):
        for handle in phrases:
            prompt = handle.prompt(prompt)
        images += generate(pipe, prompt, config, settings=gate)
    return images


def composition_success(scorer: WorldScorer, images, pair: tuple[ConceptSpec, ConceptSpec]) -> float:
    """Share of images in which the micro world's judge sees exactly the two concepts' objects."""
    wanted = sorted(concept.object for concept in pair)
    verdicts = scorer.judge.predict(scorer.fit(images))
    return sum(
        verdict.count == 2 and sorted((verdict.left_object, verdict.right_object)) == wanted for verdict in verdicts
    ) / len(verdicts)


def composition_scorer(pairs, settings: RunSettings):
    """(score(images, pair) -> {"success": share, ...}, the scorer's name), or (None, why not): for families
    concepts, both concepts recognised each on its own side, and "bleeding", the share of the images where the judge
    sees both in which one concept's colour or pattern shows on the other; for micro-world ones, the judge seeing
    exactly the two objects."""
    concepts = [concept for pair in pairs for concept in pair]
    if concepts and all(concept.instance is not None for concept in concepts):
        from perfusion.world.families import scoring

        judge = families_judge(settings)
        galleries = scoring.Galleries(judge)

        def score(images, pair) -> dict:
            instances = [(c.token, family_instance(c)) for c in pair]
            hits = scoring.both_recognised(judge, galleries, images, instances)
            return {
                "success": sum(hits) / len(hits),
                "bleeding": scoring.bleeding_share(scoring.bleeding(judge, images, instances)),
            }

        return score, "families judge"
    judge, reason = world_judge(concepts, []) if pairs else (None, None)
    if judge is None:
        return None, reason
    return (lambda images, pair: {"success": composition_success(judge, images, pair)}), judge.name


def run_compositions(
    concepts: list[ConceptSpec], variants: list[Variant], settings: RunSettings, skip: frozenset | set = frozenset()
) -> list[dict]:
    """Each pair's two-concept images and verdict, per composable variant (but the (pair, variant) keys in ``skip``)."""
    pairs = list(itertools.combinations(concepts, 2))[: 1 if settings.quick else None]
    score, name = composition_scorer(pairs, settings)
    if score is None and pairs:
        print(f"note: composition is generated but not scored ({name})", file=sys.stderr)
    jobs = [
        (pair, variant, [artifact_path(settings, concept, variant) for concept in pair])
        for pair in pairs
        for variant in variants
        if variant.method in COMPOSABLE and (f"{pair[0].name}+{pair[1].name}", variant.name) not in skip
    ]
    missing = [str(path) for _, _, artifacts in jobs for path in artifacts if not path.is_file()]
    if missing:  # before any image is generated
        raise SystemExit(f"error: no {missing[0]} to compose (--compositions-only reuses earlier artifacts)")
    results = []
    for pair, variant, artifacts in jobs:
        started = time.perf_counter()
        images = composition_images(settings.model, pair, variant, artifacts, settings)
        results.append(
            dict(
                pair=f"{pair[0].name}+{pair[1].name}",
                variant=variant.name,
                images=len(images),
                **(score(images, pair) if score else {"success": float("nan")}),
                scorer=name if score else "none",
                composition=composition_mode(variant, settings) or "",
                seconds=time.perf_counter() - started,
            )
        )
    return results


# -- the run --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    concept: str
    variant: str
    method: str
    knob: str
    default: float
    size_bytes: int
    train_seconds: float
    steps: int
    images_seen: int | None  # training images through the network (steps x images per step)
    final_loss: float
    peak_rss_bytes: int | None
    peak_rss_over_load_bytes: int | None  # the training's own memory: peak minus that of only loading
    peak_gpu_bytes: int | None
    scorer: str  # "world judge", "CLIP" or "pixel placeholder"
    sweep: list[dict] = field(default_factory=list)  # {knob value, fidelity, alignment, recognised, per_prompt}
    trends: list[dict] = field(default_factory=list)  # experiments.trend over the knob (beta and scale only)
    command: str = ""  # the compare.py command line that measured this row
    tuned: bool = False  # trained with benchmarks/tune.py's choice for its variant (--tuned)
    class_images_seen: int | None = None  # the base model's class images it also fitted (prior preservation)
    seconds: float | None = None  # the row's whole cost: training, its knob sweep's images and their scoring

    def at_default(self) -> dict:
        return next(point for point in self.sweep if point["value"] == self.default)


# Which way each knob moves the images: a higher beta shuts the gate (toward the prompt); a higher LoRA or Custom
# Diffusion scale, or a longer training, applies more of the concept.
KNOB_TOWARD_PROMPT = {"beta": 1, "scale": -1, "steps": -1}


def knob_trends(variant: Variant, sweep: list[dict]) -> list[dict]:
    if variant.knob not in KNOB_TOWARD_PROMPT:
        return []
    trends = sweep_trends(
        [point["value"] for point in sweep], [point["per_prompt"] for point in sweep], KNOB_TOWARD_PROMPT[variant.knob]
    )
    return [asdict(trend) for trend in trends]


def artifact_path(settings: RunSettings, concept: ConceptSpec, variant: Variant) -> Path:
    return Path(settings.out) / "artifacts" / f"{concept.name}-{variant.name}.safetensors"


# Settings that change what a row measures: --update keeps earlier rows only when all of them match.
MEASURING_SETTINGS = (
    "model",
    "quick",
    "steps",
    "images",
    "prompts",
    "prompts_file",
    "clip",
    "judge",
    "images_per_prompt",
    "composition_images_per_prompt",
    "inference_steps",
    "guidance",
    "seed",
    "tuned",
    "inputs",
)


def earlier_results(settings: RunSettings) -> tuple[list[Row], list[dict]]:
    """--update and --resume: the rows and compositions already in --out, each row with the command that measured
    it (--resume with nothing there yet starts afresh)."""
    path = Path(settings.out) / "results.json"
    flag = "--resume" if settings.resume else "--update"
    if not path.is_file():
        if settings.resume:
            return [], []
        raise SystemExit(f"error: --update needs an earlier run's {path}")
    earlier = json.loads(path.read_text())
    differing = [key for key in MEASURING_SETTINGS if earlier["settings"].get(key) != getattr(settings, key)]
    if differing:
        raise SystemExit(f"error: {path} was measured with other {', '.join(differing)}; run without {flag}")
    rows = [Row(**{"command": earlier["settings"]["command"], "images_seen": None, **row}) for row in earlier["rows"]]
    return rows, earlier["composition"]


def merged(earlier: list, later: list, key) -> list:
    """``earlier`` without the entries ``later`` redoes (same ``key``), and ``later``, in listed_order."""
    redone = {key(entry) for entry in later}
    entries = [entry for entry in earlier if key(entry) not in redone] + later
    return sorted(entries, key=lambda entry: listed_order(key(entry)))


def current_compositions(compositions: list[dict], trained: list[Row]) -> list[dict]:
    """The compositions not made from an artifact this run has since trained again (they measured the old one)."""
    redone = {row_key(row) for row in trained}
    return [
        composition
        for composition in compositions
        if not any((name, composition["variant"]) in redone for name in composition["pair"].split("+"))
    ]


def row_key(row: Row) -> tuple[str, str]:
    return row.concept, row.variant


def composition_key(composition: dict) -> tuple[str, str]:
    return composition["pair"], composition["variant"]


def listed_order(key: tuple[str, str]) -> tuple[str, int]:
    """(concept or pair, variant) by concept, then in VARIANTS order (a variant since removed last)."""
    names = [variant.name for variant in VARIANTS]
    return key[0], names.index(key[1]) if key[1] in names else len(names)


def run(concepts: list[ConceptSpec], variants: list[Variant], settings: RunSettings) -> tuple[list[Row], list[dict]]:
    settings = model_generation(settings)
    for variant in variants:
        if variant.needs_masks and settings.inputs != "masks":
            print(f"note: {variant.name} needs masks (paired images): skipped on --inputs photos", file=sys.stderr)
    variants = [variant for variant in variants if not (variant.needs_masks and settings.inputs != "masks")]
    out = Path(settings.out)
    kept_rows, kept_compositions = earlier_results(settings) if settings.update or settings.resume else ([], [])
    done = {row_key(row) for row in kept_rows} if settings.resume else set()
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    set_threads(settings.threads)
    rows = []
    for concept in [] if settings.compositions_only else concepts:
        to_do = [variant for variant in variants if (concept.name, variant.name) not in done]
        if not to_do:
            continue
        load_peak = (
            run_isolated(load_job, settings.model, concept, settings.threads).peak_rss_bytes
            if settings.isolate
            else None
        )
        prompts = evaluation_prompts(concept, settings)
        scorer, photos = make_scorer(settings.model, concept, prompts, settings), references(concept)
        for variant in to_do:
            started = time.perf_counter()
            artifact = artifact_path(settings, concept, variant)
            trained = train(settings.model, concept, variant, settings, artifact)
            images = generate_sweep(settings.model, concept, variant, artifact, prompts, settings)
            sweep = [
                {"value": value, **asdict(scorer.score(batches, photos, concept.supercategory))}
                for value, batches in images.items()
            ]
            trends = knob_trends(variant, sweep)
            write_sheet(
                out / "sheets" / f"{concept.name}-{variant.name}.png",
                [SheetRow(f"{variant.knob} {value}", prompt_cells(batches)) for value, batches in images.items()],
                f"{concept.name}, {variant.name}: one row per {variant.knob} ({scorer.name})",
            )
            peak = trained["peak_rss_bytes"]
            rows.append(
                Row(
                    concept.name,
                    variant.name,
                    variant.method,
                    variant.knob,
                    variant.default,
                    trained["size_bytes"],
                    trained["seconds"],
                    trained["steps"],
                    trained.get("images_seen"),
                    trained["losses"][-1] if trained["losses"] else float("nan"),
                    peak,
                    None if peak is None or load_peak is None else peak - load_peak,
                    trained["peak_gpu_bytes"],
                    scorer.name,
                    sweep,
                    trends,
                    settings.command,
                    bool(tuned_training(settings, variant)),
                    trained.get("class_images_seen"),
                    time.perf_counter() - started,
                )
            )
            kept_compositions = current_compositions(kept_compositions, rows)
            write_outputs(merged(kept_rows, rows, row_key), kept_compositions, settings)  # a stop loses one training
            print(
                f"{concept.name:>12} {variant.name:<18} {trained['size_bytes']:>12,d} B  train {trained['seconds']:7.1f} s  "
                f"all {rows[-1].seconds:7.1f} s",
                flush=True,
            )
    by_name = {variant.name: variant for variant in variants}
    skip = {  # what --resume keeps: made with this run's artifacts and in this run's mode
        composition_key(composition)
        for composition in kept_compositions
        if composition["variant"] in by_name
        and composition.get("composition", "") == (composition_mode(by_name[composition["variant"]], settings) or "")
    }
    skip = skip if settings.resume else set()
    composed = run_compositions(concepts, variants, settings, skip) if settings.compose else []
    compositions = merged(kept_compositions, composed, composition_key)
    rows = merged(kept_rows, rows, row_key)
    write_outputs(rows, compositions, settings)
    return rows, compositions


def total_seconds(rows: list[Row], compositions: list[dict]) -> float:
    """What the comparison cost in all, summed over its rows and compositions, so that a run resumed in pieces
    reports the whole (rows from before rows kept their time: those count 0)."""
    return sum(row.seconds or 0.0 for row in rows) + sum(item.get("seconds", 0.0) for item in compositions)


def write_outputs(rows: list[Row], compositions: list[dict], settings: RunSettings) -> None:
    out = Path(settings.out)
    results = {
        "settings": asdict(settings),
        "seconds": total_seconds(rows, compositions),
        "rows": [asdict(row) for row in rows],
        "composition": compositions,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if compositions:
        with open(out / "composition.csv", "w", newline="") as handle:
            fields = list(dict.fromkeys(field for composition in compositions for field in composition))
            writer = csv.DictWriter(handle, fieldnames=fields)  # earlier runs' rows may lack "composition"
            writer.writeheader()
            writer.writerows(compositions)
    columns = [
        "concept",
        "variant",
        "method",
        "knob",
        "default",
        "size_bytes",
        "train_seconds",
        "steps",
        "images_seen",
        "class_images_seen",
        "final_loss",
        "peak_rss_bytes",
        "peak_rss_over_load_bytes",
        "peak_gpu_bytes",
        "scorer",
        "tuned",
    ]
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + ["fidelity", "alignment", "recognised"])
        for row in rows:
            point = row.at_default()
            writer.writerow(
                [getattr(row, column) for column in columns]
                + [point["fidelity"], point["alignment"], point["recognised"]]
            )
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["concept", "variant", "knob", "value", "fidelity", "alignment", "recognised"])
        for row in rows:
            for point in row.sweep:
                writer.writerow(
                    [
                        row.concept,
                        row.variant,
                        row.knob,
                        point["value"],
                        point["fidelity"],
                        point["alignment"],
                        point["recognised"],
                    ]
                )
    with open(out / "trends.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["concept", "variant", "knob", "metric", "slope", "stderr", "prompts", "verdict"])
        for row in rows:
            for trend in row.trends:
                writer.writerow([row.concept, row.variant, row.knob, *trend.values()])
    from perfusion.experiments.pareto import SweepPoint, pareto_plot

    for concept in dict.fromkeys(row.concept for row in rows):
        scorer = next(row.scorer for row in rows if row.concept == concept)
        shown = "recognised" if scorer == "families judge" else "fidelity"  # the families' Pareto: recognised
        points = [
            SweepPoint(f"{row.variant} ({row.knob})", point[shown], point["alignment"], point["value"])
            for row in rows
            if row.concept == concept
            for point in row.sweep
        ]
        pareto_plot(points, out / f"pareto_{concept}.png", title=f"{concept}: each method's knob sweep", **AXES[scorer])


def main(argv: list[str] | None = None) -> tuple[list[Row], list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, help="folder for results.json, table.csv, sweep.csv, pareto_*.png, artifacts/"
    )
    parser.add_argument("--model", help="diffusers pipeline folder (default: the embedded micro-world model)")
    parser.add_argument("--concepts", help="folder of concept folders (default: the shipped example concepts)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_TRAINING['steps']} training steps, 4 prompts, 1 image each, 10 sampling steps, 3 knob values",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[variant.name for variant in VARIANTS],
        help="default: every method and its ablations; with --quick, the methods alone",
    )
    parser.add_argument("--concept", nargs="+", help="only these concept folder names")
    parser.add_argument("--steps", type=int, help="training steps for every method")
    parser.add_argument("--tuned", help="benchmarks/tune.py's tuned.json: each variant's chosen rate and length")
    parser.add_argument(
        "--inputs",
        choices=INPUTS,
        default="photos",
        help="what every method trains on: the photos alone (default), or with their masks",
    )
    parser.add_argument(
        "--images", type=int, help="every method's budget in training images seen (sets each one's steps)"
    )
    parser.add_argument("--prompts", type=int, default=12, help="evaluation prompts per concept")
    parser.add_argument(
        "--prompts-file", help=".txt or .jsonl prompt file (default: the micro world's standard prompts)"
    )
    parser.add_argument("--clip", help="a local CLIP model folder: score with CLIP-I / CLIP-T (the paper's protocol)")
    parser.add_argument("--judge", help="families laboratory: the judge's weights (default: the shipped judge)")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--inference-steps", type=int, default=25)
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="the guidance every method samples at (default: the model folder's recipe; SD1.5: 7.5)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads in every process (default: torch's own)")
    parser.add_argument("--no-isolate", action="store_true", help="train in this process (no peak-memory figures)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="redo only the chosen variants and concepts; keep --out's other rows (same settings only)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on where a stopped run left off: keep --out's rows and compositions, do only what is missing",
    )
    parser.add_argument(
        "--composition",
        choices=MODES,
        default=None,
        help="how Perfusion composes two concepts (default: the recipe's)",
    )
    parser.add_argument(
        "--compositions-only",
        action="store_true",
        help="redo only the two-concept images from the concept files in --out (implies --update)",
    )
    args = parser.parse_args(argv)
    if args.model is None:
        from perfusion.world.model_path import default_model_path

        args.model = str(default_model_path())
    if args.concepts is None:
        from perfusion.world.basemodel.export import model_world
        from perfusion.world.examples import examples_dir
        from perfusion.world.families.examples import EXAMPLES_DIR

        args.concepts = str(EXAMPLES_DIR if model_world(args.model) == "families" else examples_dir())
    settings = RunSettings(
        model=args.model,
        out=args.out,
        quick=args.quick,
        steps=args.steps,
        images=args.images,
        tuned=args.tuned,
        inputs=args.inputs,
        prompts=args.prompts,
        prompts_file=args.prompts_file,
        clip=args.clip,
        judge=args.judge,
        images_per_prompt=args.images_per_prompt,
        inference_steps=args.inference_steps,
        guidance=args.guidance,
        seed=args.seed,
        threads=args.threads,
        isolate=not args.no_isolate,
        update=args.update or args.compositions_only,
        resume=args.resume,
        composition=args.composition,
        compositions_only=args.compositions_only,
        command=shlex.join(["python", "benchmarks/compare.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    if args.resume and (args.update or args.compositions_only):
        raise SystemExit(
            "error: --resume goes on with a stopped run; --update and --compositions-only redo parts of one"
        )
    if args.tuned and args.images is not None:
        raise SystemExit("error: --tuned and --images both set the training length; give one")
    if args.tuned and not Path(args.tuned).is_file():
        raise SystemExit(f"error: --tuned {args.tuned}: no such file (benchmarks/tune.py writes tuned.json)")
    settings = settings.quickened() if settings.quick else settings
    concepts = [
        concept for concept in find_concepts(Path(args.concepts)) if not args.concept or concept.name in args.concept
    ]
    variants = chosen_variants(args.variants, args.quick)
    rows, compositions = run(concepts, variants, settings)
    print(f"the comparison cost {total_seconds(rows, compositions) / 60:.1f} min in all (results.json: seconds)")
    return rows, compositions


if __name__ == "__main__":
    main()
