"""The laboratory's report (issue 30, section 5): `make lab-report` writes lab-report/report.html and
lab-report/summary.json.

    python -m perfusion.world.families.lab_report [--model DIR] [--out lab-report] [--quick]

- base_model: the base model's bars (base_eval), pooled over categories; base_model_ceiling: the same judge on
  renders of the prompts' own scenes (what a model that drew every prompt exactly would score);
- judge: renders of reserved instances recognised, the least-refused kind of negative (judge_check), and its
  agreement with a person on generated images it never trained on (eye_labels, the audit split; None without one);
- examples: on each shipped example, the prior, the verbal oracle and the value oracle, 12 prompts x 2 seeds;
- seen_member: Perfusion with the model folder's recipe, trained on 5 photos of each category's first seen
  instance, recognised on the same prompts; seen_member_ceiling: on the same instances, fresh renders recognised (the
  judge's ceiling) and the verbal oracle (the base model's).
"""

from __future__ import annotations

import argparse
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from perfusion.files import atomic_write
from perfusion.recipes import read_recipe
from perfusion.sheets import SheetRow, write_sheet
from perfusion.world.basemodel.data import world_captions

from . import base_eval, judge_check
from .categories import CATEGORY_NAMES
from .controls import ORACLE_TOKEN, value_oracle
from .examples import example_instances
from .eye_labels import EyeLabels
from .eye_labels import audit as eye_audit
from .instances import seen_instances
from .judge import Judge
from .scenes import photos
from .scoring import Galleries, draw_and_score

CONCEPT_TOKEN = "<concept>"


def controls(pipe, judge: Judge, galleries: Galleries, out: Path, templates: Sequence[str]) -> dict:
    """The prior, the verbal oracle and the value oracle (its i* over ``templates``: the recipe's training templates)
    on each shipped example."""
    from perfusion import load_concepts, unload_concepts

    results = {}
    captions = world_captions()
    for folder, instance in example_instances().items():
        rows, results[folder] = [], {}
        prior, row = draw_and_score(pipe, judge, instance, instance.category, galleries, "prior")
        results[folder]["prior"], _ = prior.summary(), rows.append(row)
        verbal, row = draw_and_score(pipe, judge, instance, "", galleries, "verbal oracle", leave_out_changed=True)
        results[folder]["verbal_oracle"], _ = verbal.summary(), rows.append(row)
        load_concepts(pipe, [value_oracle(pipe, instance, templates=templates)], captions=captions)
        oracle, row = draw_and_score(pipe, judge, instance, ORACLE_TOKEN, galleries, "value oracle")
        unload_concepts(pipe, [ORACLE_TOKEN])
        results[folder]["value_oracle"], _ = oracle.summary(), rows.append(row)
        photo_row = SheetRow("the concept's photos", [(image, "") for image, _, _ in photos(instance, 5, seed=0)])
        write_sheet(
            out / f"controls-{folder}.png", [photo_row, *rows], title=f"{folder}: {instance.describe()}", columns=12
        )
    return results


def seen_photos(name: str, masks: bool = True):
    """A category's first seen instance, its 5 training photos (image, mask, spec; seed 0) and those as training
    images (without their masks where ``masks`` is False: a user with photos alone)."""
    from perfusion.training.images import TrainingImage

    instance = seen_instances(name)[0]
    shots = photos(instance, 5, seed=0)
    images = [
        TrainingImage(f"{index:02d}.png", image, mask if masks else None)
        for index, (image, mask, _) in enumerate(shots)
    ]
    return instance, shots, images


def write_seen_sheet(path: Path, shots, row: SheetRow, title: str) -> None:
    """The training photos above one method's images of the seen member."""
    photo_row = SheetRow("the photos", [(image, "") for image, _, _ in shots])
    write_sheet(path, [photo_row, row], title=title, columns=12)


def seen_member(
    pipe, judge: Judge, galleries: Galleries, out: Path, training: dict, categories, tag: str = "", masks: bool = True
) -> dict:
    """Perfusion with the ``training`` settings (TrainingConfig's fields; the model folder's recipe in the report) on
    5 photos of each category's first seen instance (with their masks, or without: the model's own attention masks
    for the category word); a sheet per category (``seen-{name}{tag}.png``)."""
    from perfusion import load_concepts, unload_concepts
    from perfusion.training.trainer import TrainingConfig, train_concept

    captions = world_captions()
    results = {}
    for name in categories:
        instance, shots, images = seen_photos(name, masks)
        config = TrainingConfig(**{**training, "pair_words": tuple(training.get("pair_words", ()))})
        started = time.time()
        result = train_concept(pipe, images, CONCEPT_TOKEN, name, config, captions=captions, progress=False)
        seconds = time.time() - started
        load_concepts(pipe, [result.concept], captions=captions)
        scores, row = draw_and_score(pipe, judge, instance, CONCEPT_TOKEN, galleries, f"Perfusion, seen {name}")
        unload_concepts(pipe, [CONCEPT_TOKEN])
        ratio, cosine = result.value_drift  # o*_V against W_V i*_super: far above 1 at a low cosine overshoots
        results[name] = {**scores.summary(), "training_seconds": seconds, "value_ratio": ratio, "value_cosine": cosine}
        write_seen_sheet(out / f"seen-{name}{tag}.png", shots, row, f"seen member {name}{tag}: {instance.describe()}")
    return results


def seen_member_baseline(
    pipe,
    judge: Judge,
    galleries: Galleries,
    out: Path,
    method: str,
    overrides: dict,
    categories,
    tag: str = "",
    masks: bool = True,
) -> dict:
    """A baseline (a perfusion.baselines name: "dreambooth", "lora", ...) at its small-model settings with
    ``overrides`` (class images at the model's own guidance; the loss weighted by the masks where given), trained on the same 5 photos of each category's first
    seen instance as ``seen_member`` and scored the same way. Where a baseline brings the member back and Perfusion
    does not, the recipe is at fault; where every method fails, the laboratory is."""
    import copy
    import tempfile

    from perfusion import baselines

    from .sampling import model_guidance

    module = baselines.method(method)
    results = {}
    for name in categories:
        instance, shots, images = seen_photos(name, masks)
        settings = {"class_guidance": model_guidance(), "use_masks": masks, **overrides}  # as compare.py gives them
        config = module.CONFIG.for_small_model(**settings)
        started = time.time()
        result = module.train(pipe, images, CONCEPT_TOKEN, name, config, progress=False)
        seconds = time.time() - started
        personal = copy.deepcopy(pipe)  # a baseline changes the pipeline it is applied to
        with tempfile.TemporaryDirectory() as folder:
            handle = module.apply(personal, baselines.save(result, Path(folder) / "artifact.safetensors"))
        label = f"{method}, seen {name}"
        scores, row = draw_and_score(personal, judge, instance, handle.prompt(CONCEPT_TOKEN), galleries, label)
        results[name] = {**scores.summary(), "training_seconds": seconds, "steps": result.steps}
        title = f"seen member {name}, {method}{tag}: {instance.describe()}"
        write_seen_sheet(out / f"seen-{name}-{method}{tag}.png", shots, row, title)
    return results


def seen_member_ceiling(pipe, judge: Judge, galleries: Galleries, out: Path, categories) -> dict:
    """What the seen-member control can reach, per category: fresh renders of the first seen instance recognised
    (the judge's own ceiling), and the verbal oracle on the concept prompts (the base model told every coarse word of
    a member it saw in 5% of its scenes); a sheet per category (``seen-{name}-ceiling.png``)."""
    results = {}
    for name in categories:
        instance = seen_instances(name)[0]
        renders = photos(instance, 8, seed=1)  # not the 5 training photos (seed 0)
        reading = judge.read([image for image, _, _ in renders])
        recognised = galleries(instance, {}).recognised(reading)
        verbal, row = draw_and_score(pipe, judge, instance, "", galleries, "verbal oracle", leave_out_changed=True)
        results[name] = {"renders_recognised": sum(recognised) / len(recognised), "verbal_oracle": verbal.summary()}
        render_row = SheetRow(
            "fresh renders", [(image, "REC" if hit else "-") for (image, _, _), hit in zip(renders, recognised)]
        )
        title = f"seen member {name}, ceiling: {instance.describe()}"
        write_sheet(out / f"seen-{name}-ceiling.png", [render_row, row], title=title, columns=12)
    return results


def write_html(out: Path, summary: dict) -> None:
    sheets = sorted(path.name for path in out.rglob("*.png"))
    body = [f"<h1>Laboratory report</h1><pre>{html.escape(json.dumps(summary, indent=1))}</pre>"]
    body += [
        f"<h2>{html.escape(name)}</h2><img src='{html.escape(str(path.relative_to(out)))}'>"
        for name, path in ((p, next(out.rglob(p))) for p in sheets)
    ]
    page = "<!doctype html><meta charset='utf-8'><title>Laboratory report</title>" + "\n".join(body)
    atomic_write(out / "report.html", lambda temporary: Path(temporary).write_text(page))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--out", type=Path, default=Path("lab-report"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 base-model prompts, 16 spread samples, seen members of cat and mug only",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--judge", type=Path, default=None, help="judge weights (default: the shipped judge)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    from diffusers import StableDiffusionPipeline

    from perfusion.world.model_path import default_model_path

    model = arguments.model or default_model_path()
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    galleries = Galleries(judge)
    quick = arguments.quick
    base = base_eval.evaluate(pipe, judge, 16 if quick else 64, 2, out / "base", spread_samples=16 if quick else 64)
    checked = judge_check.check(judge, 2 if arguments.quick else 4, out / "judge")
    audited = eye_audit(judge, EyeLabels.load().split("audit"), out / "judge" / "audit.png")
    recipe = read_recipe(model)
    seen_categories = ("cat", "mug") if arguments.quick else CATEGORY_NAMES
    summary = {
        "base_model": {key: base["pooled"].get(key) for key in base_eval.BARS},
        "base_model_ceiling": {key: base["ceiling"].get(key) for key in base_eval.BARS},  # the judge on exact renders
        "judge": {
            "renders_recognised": checked["renders_recognised"],
            "garbage_refused_min": checked["garbage_refused_min"],
            "audit_agreement": audited["agreement"] if audited else None,
            "audit_false_accepts": audited["false_accepts"] if audited else None,
            "audit_consensus": audited.get("consensus"),  # where two blind labellings agree: the bars' protocol
        },
        "examples": controls(pipe, judge, galleries, out, recipe.training_config().templates),
        "seen_member": seen_member(
            pipe,
            judge,
            galleries,
            out,
            recipe.training,
            seen_categories,
        ),
        "seen_member_ceiling": seen_member_ceiling(pipe, judge, galleries, out, seen_categories),
    }
    atomic_write(out / "summary.json", lambda temporary: Path(temporary).write_text(json.dumps(summary, indent=1)))
    write_html(out, summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
