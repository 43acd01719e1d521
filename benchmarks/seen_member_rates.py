"""The seen-member control at several value learning rates (issue 30, section 4; issue 31's first bar).

Perfusion trained on 5 photos of each category's first seen instance (a member the base model saw in 5% of its
scenes), with the model folder's recipe and o*_V's learning rate (and, optionally, how o*_V is trained and the step count)
replaced; each concept drawn on the 12 concept prompts x 2 seeds and scored by the judge. A recipe that cannot draw a
member the model already draws fails for its own reasons, not the laboratory's. ``--ceiling`` first scores what
the control can reach: fresh renders of each seen member, and the base model's verbal oracle of it.

    python benchmarks/seen_member_rates.py --model DIR --rates 3e-3 1e-2 3e-2 [--categories cat mug] [--steps 400] \
        [--value-spaces free shared-encoding] [--ceiling] [--baselines dreambooth lora ...] [--no-masks]

``--baselines`` also trains those methods (their small-model settings; ``--steps`` sets their length too) on the
same photos: a baseline that brings the member back where Perfusion does not puts the fault on the recipe; if none
does, on the laboratory. ``--rates`` with no value skips Perfusion. ``--no-masks`` trains on the photos alone (Perfusion
then takes the model's own attention masks for the category word; issue 31 asks for the bar within 0.1 of given masks).

Writes OUT/seen-{category}-{space}-lr{rate}.png and OUT/summary.json (recognised, attribute match, alignment,
seconds, value drift); settings run earlier into the same OUT stay in its summary.
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from perfusion.baselines import METHOD_MODULES
from perfusion.recipes import read_recipe
from perfusion.training.values import VALUE_SPACES
from perfusion.world.families.judge import JUDGE_PATH, Judge
from perfusion.world.families.lab_report import seen_member, seen_member_baseline, seen_member_ceiling
from perfusion.world.families.scoring import Galleries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rates", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--categories", nargs="+", default=["cat", "mug"])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    parser.add_argument("--value-spaces", nargs="+", choices=VALUE_SPACES, default=["free"])
    parser.add_argument("--ceiling", action="store_true", help="first: the seen members' renders and verbal oracle")
    parser.add_argument("--baselines", nargs="+", default=[], choices=sorted(METHOD_MODULES))
    parser.add_argument("--no-masks", action="store_true", help="train on the photos without their masks")
    parser.add_argument("--judge", type=Path, default=JUDGE_PATH)
    parser.add_argument("--out", type=Path, default=Path("work/seen-member-rates"))
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    masks, unmasked = not arguments.no_masks, "-nomasks" if arguments.no_masks else ""
    torch.set_num_threads(arguments.threads)
    pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    judge = Judge.load(arguments.judge)
    galleries = Galleries(judge)
    arguments.out.mkdir(parents=True, exist_ok=True)
    summary_path = arguments.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}  # earlier rates are kept
    if arguments.ceiling:
        summary["ceiling"] = seen_member_ceiling(pipe, judge, galleries, arguments.out, arguments.categories)
        print("ceiling", json.dumps(summary["ceiling"]), flush=True)
        summary_path.write_text(json.dumps(summary, indent=1))
    for space in arguments.value_spaces:
        for rate in arguments.rates:
            training = {**read_recipe(arguments.model).training, "lr_values": rate, "value_space": space}
            if arguments.steps:
                training["steps"] = arguments.steps
            tag = f"-{space}-lr{rate:g}{unmasked}"
            summary[tag[1:]] = seen_member(
                pipe, judge, galleries, arguments.out, training, arguments.categories, tag, masks
            )
            print(tag[1:], json.dumps(summary[tag[1:]]), flush=True)
            summary_path.write_text(json.dumps(summary, indent=1))
    for method in arguments.baselines:
        overrides = {"steps": arguments.steps} if arguments.steps else {}
        tag = (f"-steps{arguments.steps}" if arguments.steps else "") + unmasked
        key = method + tag
        summary[key] = seen_member_baseline(
            pipe, judge, galleries, arguments.out, method, overrides, arguments.categories, tag, masks
        )
        print(key, json.dumps(summary[key]), flush=True)
        summary_path.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
