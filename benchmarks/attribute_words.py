"""Does the base model read its attribute words? Same seeds, one word changed.

    python benchmarks/attribute_words.py --model src/perfusion/world/families/model --out work/attribute-words
        [--seeds 8] [--judge PATH]

For each category, "a large <colour> <category> on a gray background" is drawn beside the same prompt with a pattern
named (as an adjective, "striped", and as a phrase, "with black stripes"), on the same seeds. Reported per wording:
- change: the mean absolute pixel difference (0-255) from the unpatterned prompt's image of the same seed; a word the
  model ignores changes nothing;
- read: the share of images in which the judge reads the named pattern;
- attention: the cross-attention mass each word of the prompt receives from the image's central cells (the middle
  half of every side, where a large object lies), averaged over layers at t = 600 from the seeds' noise.
- encodings: in "a large <word> cat on a gray background", the mean pairwise cosine of the text encoder's output at
  the word, over the pattern words and over the colour words, and at the noun after them: a word the encoder sends
  where its siblings go cannot be read by any UNet; and for shape words, the cosine between a category's low and
  high word for one parameter ("short-tailed", "long-tailed"), at the word's last token and at the noun after it,
  averaged over every parameter named both ways.
A sheet (one row per prompt) is written beside the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from perfusion.sheets import SheetRow, write_sheet
from perfusion.world.basemodel.grounding import WORD_PATTERN, AttentionRecorder, CaptionGrounding
from perfusion.world.families.categories import CATEGORIES
from perfusion.world.families.judge import Judge
from perfusion.world.families.palette import COLOURS
from perfusion.world.families.sampling import generate_images

SUBJECTS = {  # category: (body colour, pattern colour, patterns its family draws)
    "cat": ("white", "black", ("stripes", "spots", "patches")),
    "dog": ("brown", "white", ("spots", "patches")),
    "mug": ("white", "blue", ("stripes", "spots", "band")),
    "fish": ("yellow", "black", ("stripes", "spots")),
}
ADJECTIVES = {"stripes": "striped", "spots": "spotted", "patches": "patched", "band": "banded"}
SUFFIX = " on a gray background"


def prompts(category: str) -> list[tuple[str, str | None]]:
    """(prompt, the pattern it names or None)."""
    colour, second, patterns = SUBJECTS[category]
    rows = [(f"a large {colour} {category}{SUFFIX}", None)]
    for pattern in patterns:
        rows.append((f"a large {colour} {ADJECTIVES[pattern]} {category}{SUFFIX}", pattern))
        phrase = f"with a {second} band" if pattern == "band" else f"with {second} {pattern}"
        rows.append((f"a large {colour} {category} {phrase}{SUFFIX}", pattern))
    return rows


@torch.no_grad()
def attention_by_word(pipe, texts: list[str], seed: int, timestep: int = 600) -> list[dict[str, float]]:
    """Per prompt, the mean cross-attention mass of each of its tokens over the central cells (BOS, EOS and padding
    pooled as "<special>")."""
    recorder = AttentionRecorder(pipe.unet)
    try:
        size = pipe.unet.config.sample_size
        noise = torch.randn(
            len(texts), pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed)
        )
        encoding = pipe.encode_prompt(texts, "cpu", 1, False)[0]
        with recorder.recording():
            pipe.unet(noise, torch.full((len(texts),), timestep), encoding)
        maps = recorder.maps
    finally:
        recorder.remove()
    tokenizer, out = pipe.tokenizer, []
    for row, text in enumerate(texts):
        ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        mass = torch.zeros(len(ids))
        for layer in maps:
            side = int(round(layer.shape[1] ** 0.5))
            grid = layer[row].reshape(side, side, -1)[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4]
            mass += grid.reshape(-1, grid.shape[-1]).mean(0).float() / len(maps)
        words: dict[str, float] = {}
        for index, token in enumerate(ids):
            special = token in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
            name = "<special>" if special else tokenizer.convert_ids_to_tokens(token).removesuffix("</w>")
            words[name] = words.get(name, 0.0) + float(mass[index])
        out.append({word: round(value, 3) for word, value in words.items()})
    return out


@torch.no_grad()
def encoding_cosines(pipe) -> dict[str, float]:
    """Mean pairwise cosine of the encodings of the pattern words, of the colour words, and of the noun after each."""

    def mean_cosine(vectors: torch.Tensor) -> float:
        unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
        similarity = unit @ unit.T
        count = len(unit)
        return float((similarity.sum() - count) / (count * (count - 1)))

    groups = {"pattern": ["plain", *ADJECTIVES.values()], "colour": list(COLOURS)}
    result = {}
    for name, words in groups.items():
        states = pipe.encode_prompt([f"a large {w} cat{SUFFIX}" for w in words], "cpu", 1, False)[0]
        result[f"{name}_words"] = mean_cosine(states[:, 3])  # BOS, "a", "large", the word
        result[f"noun_after_{name}_words"] = mean_cosine(states[:, 4])
    return result | shape_cosines(pipe)


@torch.no_grad()
def shape_cosines(pipe) -> dict[str, float]:
    """Cosine between the encodings after a parameter's low and high shape word, at the word's last token and at
    the noun after it, averaged over every (category, parameter) named both ways."""
    pieces = CaptionGrounding(pipe.tokenizer)
    at_word, at_noun = [], []
    for category, family in CATEGORIES.items():
        for shape in family.shapes:
            if not (shape.low and shape.high):
                continue
            texts = [f"a large {word} {category}{SUFFIX}" for word in (shape.low[0], shape.high[0])]
            states = pipe.encode_prompt(texts, "cpu", 1, False)[0].float()
            nouns = []
            for text in texts:  # the noun's last token (position 0 is BOS)
                words = WORD_PATTERN.findall(text)
                nouns.append(sum(pieces.word_token_counts(words[: words.index(category) + 1])))
            words_end = [noun - pieces.word_token_counts([category])[0] for noun in nouns]
            cosine = torch.nn.functional.cosine_similarity
            at_word.append(float(cosine(states[0, words_end[0]], states[1, words_end[1]], dim=0)))
            at_noun.append(float(cosine(states[0, nouns[0]], states[1, nouns[1]], dim=0)))
    return {"shape_words_low_high": float(np.mean(at_word)), "noun_after_shape_words_low_high": float(np.mean(at_noun))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--judge", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
    seeds = list(range(arguments.seeds))
    results, rows = {}, []
    for category in SUBJECTS:
        pairs = prompts(category)
        texts = [text for text, _ in pairs]
        images = generate_images(pipe, texts, seeds)
        reading = judge.read(images)
        pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images]).reshape(len(texts), len(seeds), -1)
        attention = attention_by_word(pipe, texts, seed=0)
        for index, (text, pattern) in enumerate(pairs):
            read = [reading.label("pattern", index * len(seeds) + s) for s in range(len(seeds))]
            results[text] = {
                "pattern": pattern,
                "change": float(np.abs(pixels[index] - pixels[0]).mean()),
                "read": float(np.mean([label == (pattern or "plain") for label in read])),
                "attention": attention[index],
            }
            rows.append(
                SheetRow(
                    text.removesuffix(SUFFIX), [(image, r) for image, r in zip(images[index * len(seeds) :], read)]
                )
            )
    summary = {}
    for wording, test in (("adjective", lambda t: "with" not in t), ("phrase", lambda t: "with" in t)):
        named = [r for t, r in results.items() if r["pattern"] and test(t)]
        summary[wording] = {key: float(np.mean([r[key] for r in named])) for key in ("change", "read")}
    plain = [r for r in results.values() if r["pattern"] is None]
    summary["unpatterned"] = {"read": float(np.mean([r["read"] for r in plain]))}
    summary["encodings"] = encoding_cosines(pipe)
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "attribute_words.json").write_text(json.dumps({"summary": summary, "prompts": results}, indent=1))
    write_sheet(
        arguments.out / "attribute-words.png",
        rows,
        title=f"{arguments.model}: same seeds, one word changed",
        columns=len(seeds),
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
