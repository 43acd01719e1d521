"""Evaluation prompt files.

A prompt file is either plain text or JSON Lines:

* ``.txt``: one prompt per line with ``{}`` where the concept goes (``a photo of {} on the beach``); blank lines
  and lines starting with ``#`` are skipped. Enough for CLIP scoring.
* ``.jsonl``: one object per line: ``{"prompt": "a photo of a {} on the left on a red background",
  "background": "red", "position": "left"}``. The micro-world keys (background, position, size,
  second_object) say what the prompt asks for, so the world judge can score alignment; without "prompt" the
  text is written from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from perfusion.world.prompts import ATTRIBUTES, PromptSpec, standard_prompts

PLACEHOLDER = "{}"


class PromptFileError(ValueError):
    """A prompt file that cannot be read."""


@dataclass(frozen=True)
class EvalPrompt:
    template: str  # with "{}" where the concept (or its supercategory word) goes
    spec: PromptSpec | None = None  # what a micro-world prompt states

    def text(self, subject: str) -> str:
        return self.template.replace(PLACEHOLDER, subject)

    def to_json(self) -> str:
        stated = {name: getattr(self.spec, name) for name in ATTRIBUTES if self.spec and getattr(self.spec, name)}
        return json.dumps({"prompt": self.template, **stated})


def world_prompts(supercategory: str, count: int = 12, seed: int = 0) -> list[EvalPrompt]:
    """The default prompt set for a micro-world concept: new backgrounds, positions, sizes, second objects."""
    return [EvalPrompt(spec.text(PLACEHOLDER), spec) for spec in standard_prompts(supercategory, count, seed)]


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over the list (its first and last among them)."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return items[:1]
    return [items[round(index * (len(items) - 1) / (count - 1))] for index in range(count)]


def family_prompts(instance, count: int = 12) -> dict:
    """The families laboratory's concept prompts for an instance (DreamBench's mix, spread over its kinds), each as
    an EvalPrompt keyed to the ConceptPrompt that says what it states and changes."""
    from perfusion.world.families.concept_prompts import concept_prompts

    return {EvalPrompt(prompt.text(PLACEHOLDER)): prompt for prompt in spread(concept_prompts(instance), count)}


def read_prompts(path: str | Path, supercategory: str | None = None) -> list[EvalPrompt]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    lines = [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise PromptFileError(f"{path}: no prompts")
    prompts = []
    for number, line in lines:
        where = f"{path}:{number}"
        if path.suffix == ".jsonl":
            prompts.append(json_prompt(line, where, supercategory))
        elif PLACEHOLDER not in line:
            raise PromptFileError(f"{where}: no {{}} where the concept goes")
        else:
            prompts.append(EvalPrompt(line))
    return prompts


def json_prompt(line: str, where: str, supercategory: str | None) -> EvalPrompt:
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(fields, dict):
        raise PromptFileError(f"{where}: expected an object")
    unknown = set(fields) - {"prompt", *ATTRIBUTES}
    if unknown:
        raise PromptFileError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    stated = {name: fields[name] for name in ATTRIBUTES if fields.get(name) is not None}
    try:
        spec = PromptSpec(**stated, supercategory=supercategory) if stated else None
    except ValueError as error:
        raise PromptFileError(f"{where}: {error}") from None
    template = fields.get("prompt") or (spec.text(PLACEHOLDER) if spec else None)
    if not template or PLACEHOLDER not in template:
        raise PromptFileError(f"{where}: no prompt with {{}} where the concept goes")
    return EvalPrompt(template, spec)


def write_prompts(prompts: list[EvalPrompt], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(prompt.to_json() + "\n" for prompt in prompts))
    return path
