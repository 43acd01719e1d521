"""Can one value vector draw an instance's attributes? The value oracle (perfusion.world.families.controls) with o*_V
made from different parts of the verbal oracle's encodings, beside the verbal oracle itself, on one contact sheet.

    python benchmarks/value_oracle_variants.py --model work/families-model --example mymug [--out sheet.png]

Rows: the oracle as shipped (W_V of the mean of the attribute words' and noun's encodings), the noun's own encoding
in context, the colour word's alone, the sum of every word's (and that sum scaled by each of --scales), the mean of
the appearance words (colour, pattern, accessory), two per-head mixtures, and the verbal oracle's prompt; three
prompts x seeds 0 and 1. Keys are locked to the category in every row, so only the value differs.

The per-head mixtures weight each word's value, head by head, by the attention mass that head gives the word while
the verbal oracle's prompt is drawn (summed over pixels, timesteps and seeds 0 and 1): the value each head reads at
the object, normalised to one word ("per-head mixture"), or rescaled by the head's mass on all the words over its
mass on the category word in "a photo of a <category>" ("... x mass ratio"), since the locked key receives the
category word's attention only. The last row mixes every token of the prompt between its start and end tokens,
function words included: the text encoder is causal, so "with" after "black cat" carries the colour too.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.loader import load_concepts, unload_concepts
from perfusion.pipeline.text import word_positions
from perfusion.sheets import SheetRow, write_sheet
from perfusion.world.families.captions import UNGROUNDED
from perfusion.world.families.controls import ORACLE_TOKEN, value_oracle, verbal_description
from perfusion.world.families.instances import example_instances
from perfusion.world.families.sampling import generate_images


class AttentionMass:
    """An attention processor that adds up, per head, the attention each text token receives in the conditional half
    of a classifier-free-guided batch, and otherwise attends as diffusers' ``AttnProcessor``."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.plain, self.mass = AttnProcessor(), None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(query, key, None)
            batch = hidden_states.shape[0]
            per_head = probs.view(batch, attn.heads, *probs.shape[1:])[batch // 2 :].sum((0, 2))
            self.mass = per_head if self.mass is None else self.mass + per_head
        return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@torch.no_grad()
def attention_mass(pipe, prompt: str, seeds=(0, 1)) -> dict[str, torch.Tensor]:
    """Cross-attention layer name -> (heads, tokens) attention mass while ``prompt`` is drawn at ``seeds``."""
    saved = pipe.unet.attn_processors
    recorders = {name: AttentionMass() for name in saved}
    pipe.unet.set_attn_processor(dict(recorders))  # diffusers pops from the dict it is given
    try:
        generate_images(pipe, [prompt], list(seeds))
    finally:
        pipe.unet.set_attn_processor(dict(saved))
    return {name.removesuffix(".processor"): r.mass for name, r in recorders.items() if r.mass is not None}


PROMPTS = ("a {} on a blue background", "a photo of a {}", "a {} against a yellow background")


@torch.no_grad()
def variants(pipe, instance, scales=()) -> dict:
    """label -> a value-oracle concept whose o*_V is W_V of one choice of the verbal oracle's encodings (and of their
    sum times each of ``scales``)."""
    text = TextConditioning.of(pipe)
    ids = text.tokenize([f"a photo of a {verbal_description(instance)}"])
    states = text.encode(ids)[0]
    tokenizer = text.tokenizer
    pieces = tokenizer.convert_ids_to_tokens(ids[0][0].tolist())
    start, end = len(tokenizer.tokenize("a photo of a")) + 1, pieces.index(tokenizer.eos_token)
    words = [i for i in range(start, end) if pieces[i].removesuffix("</w>") not in UNGROUNDED]

    def last_token_of(word: str) -> int:
        ids_of = tokenizer(word, add_special_tokens=False).input_ids
        return int(word_positions(ids[0], ids_of, True)[0].nonzero().flatten()[0])

    noun, colour = last_token_of(instance.category), last_token_of(instance.colour_name)
    shape_tokens = {
        token
        for shape in instance.family.shapes
        for word in shape.words(instance.shape[shape.name])[:1]
        for token in tokenizer.tokenize(word)
    }
    appearance = [i for i in words if pieces[i] not in shape_tokens and i != noun]
    layers = cross_attention_modules(pipe.unet)
    shipped = value_oracle(pipe, instance)

    def with_value(vector: torch.Tensor):
        return replace(shipped, value_targets={name: module.to_v(vector).float() for name, module in layers.items()})

    oracle_mass = attention_mass(pipe, f"a photo of a {verbal_description(instance)}")
    prior_ids = text.tokenize([f"a photo of a {instance.category}"])[0]
    prior_noun = int(
        word_positions(prior_ids, tokenizer(instance.category, add_special_tokens=False).input_ids, True)[0]
        .nonzero()
        .flatten()[-1]
    )
    prior_mass = attention_mass(pipe, f"a photo of a {instance.category}")

    def per_head(ratio: bool, tokens=words):
        targets = {}
        for name, module in layers.items():
            mass = oracle_mass[name][:, tokens]  # (heads, tokens)
            values = module.to_v(states[tokens]).float().view(len(tokens), module.heads, -1)  # (tokens, heads, d)
            mixture = torch.einsum("hw,whd->hd", mass / mass.sum(1, keepdim=True), values)
            if ratio:
                mixture = mixture * (mass.sum(1) / prior_mass[name][:, prior_noun])[:, None]
            targets[name] = mixture.flatten()
        return replace(shipped, value_targets=targets)

    return {
        "shipped: mean of words and noun": shipped,
        "noun in context": with_value(states[noun]),
        "colour word alone": with_value(states[colour]),
        "sum of the words": with_value(states[words].sum(0)),
        **{f"sum x {scale}": with_value(states[words].sum(0) * scale) for scale in scales},
        "mean of appearance words": with_value(states[appearance].mean(0)),
        "per-head mixture": per_head(False),
        "per-head mixture x mass ratio": per_head(True),
        "every token's, x mass ratio": per_head(True, list(range(1, end))),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a families pipeline folder")
    parser.add_argument("--example", default="mymug", help="a shipped example's folder name")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scales", type=float, nargs="*", default=(), help="also the sum of the words times these")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
    instance = example_instances()[arguments.example]
    description = verbal_description(instance)
    rows = []
    for label, concept in variants(pipe, instance, arguments.scales).items():
        load_concepts(pipe, concept)
        images = generate_images(pipe, [prompt.format(ORACLE_TOKEN) for prompt in PROMPTS], [0, 1])
        unload_concepts(pipe)
        rows.append(SheetRow(label, [(image, "") for image in images]))
    verbal = generate_images(pipe, [prompt.format(description) for prompt in PROMPTS], [0, 1])
    rows.append(SheetRow("verbal oracle", [(image, "") for image in verbal]))
    out = arguments.out or Path(f"value-oracle-{arguments.example}.png")
    write_sheet(out, rows, title=f"value oracle variants: {description}", columns=6)
    print(out)


if __name__ == "__main__":
    main()
