"""The laboratory's controls: what words alone, and what the value pathway alone, can draw of an instance.

- The prior: the category word ("cat").
- The verbal oracle: every coarse attribute of the instance in words (``verbal_description``).
- The value oracle (``value_oracle``): an untrained concept whose keys are locked to the category and whose value
  target per layer is W_V of the verbal oracle's encodings of its attribute words and noun, taken together (their
  mean). It shows whether the value pathway can express the instance's attributes at all: the category word's
  encoding alone does not carry them, since the words around it carry them through their own cross-attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import Concept
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.fingerprint import pipeline_fingerprint
from perfusion.training.trainer import DEFAULT_TEMPLATES

from .captions import UNGROUNDED
from .categories import PATTERN_WORDS
from .instances import Instance

ORACLE_TOKEN = "<oracle>"


def verbal_description(instance: Instance, leave_out: frozenset[str] = frozenset()) -> str:
    """Every coarse attribute in words, without its article: "slim big-eared long-tailed black cat with white
    stripes wearing a red collar". Attributes in ``leave_out`` (colour, pattern) are not named (a prompt names
    its own)."""
    family = instance.family
    words = [word for shape in family.shapes for word in shape.words(instance.shape[shape.name])[:1]]
    if "colour" not in leave_out:
        words.append(instance.colour_name)
    words.append(instance.category)
    if instance.pattern != "plain" and "pattern" not in leave_out:
        noun = PATTERN_WORDS[instance.pattern][1].removeprefix("with ").removeprefix("a ")
        words.append(
            f"with {instance.second_colour_name} {noun}"
            if instance.pattern != "band"
            else f"with a {instance.second_colour_name} band"
        )
    if instance.accessory is not None:
        words.append(f"wearing a {instance.accessory_name} {family.accessory}")
    return " ".join(words)


@torch.no_grad()
def attribute_encoding(pipe, instance: Instance) -> torch.Tensor:
    """The mean encoding of the verbal oracle's attribute words and noun, in "a photo of a <description>"."""
    text = TextConditioning.of(pipe)
    ids = text.tokenize([f"a photo of a {verbal_description(instance)}"])
    states = text.encode(ids)[0]
    tokenizer = text.tokenizer
    start = len(tokenizer.tokenize("a photo of a")) + 1  # after BOS
    pieces = tokenizer.convert_ids_to_tokens(ids[0][0].tolist())
    end = pieces.index(tokenizer.eos_token) if tokenizer.eos_token in pieces else len(pieces)
    keep = [i for i in range(start, end) if pieces[i].removesuffix("</w>") not in UNGROUNDED]  # attribute words only
    return states[keep].mean(0)


@torch.no_grad()
def value_oracle(
    pipe, instance: Instance, token: str = ORACLE_TOKEN, templates: Sequence[str] = DEFAULT_TEMPLATES
) -> Concept:
    """The untrained value oracle of ``instance`` as a concept file's contents: v* the category word's embedding
    (its encoding is the category's, so the gate opens and the keys follow the category), o*_V = W_V of the
    attribute words' mean encoding in every cross-attention layer. i* and i*_super are the category word's mean
    encoding over ``templates``, where a trained concept's i* is tracked (the training templates): from one sentence,
    the gate stayed half shut in other contexts (s 0.3-0.7 on the concept prompts)."""
    text = TextConditioning.of(pipe)
    category = instance.category
    ids = text.tokenize([template.format(category) for template in templates])
    encoding = text.mean_word_encoding(ids, text.supercategory_ids(category))
    mixture = attribute_encoding(pipe, instance)
    layers = cross_attention_modules(pipe.unet)
    embeddings = [tower.word_embeddings(category).mean(0) for tower in text.towers]
    return Concept(
        token=token,
        supercategory=category,
        token_embeddings=[vector.float() for vector in embeddings],
        concept_encoding=encoding.float(),
        supercategory_encoding=encoding.float().clone(),
        value_targets={
            name: module.to_v(mixture.to(module.to_v.weight.dtype)).float() for name, module in layers.items()
        },
        base_fingerprint=pipeline_fingerprint(pipe),
    )
