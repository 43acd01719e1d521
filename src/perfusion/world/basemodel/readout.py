"""Attribute readout through the UNet's cross-attention: what an object's cells gather from the caption must state
the object's stated pattern and colour.

The text encoder is causal, so "with black stripes" after the noun can be read only at its own tokens. With the
object's words holding its box's attention jointly (grounding_pixel_tokens "together"), the diffusion loss gave most
of it to the noun (0.67-0.85), and post-noun phrases changed little ("with blue stripes" and "with blue spots" drew
the same mug; docs/basemodel.md). This asks the attention itself: per cross-attention layer and object, the text
states of the object's own words (its grounded tokens T_o) averaged with the attention its box's cells give them,

    r = sum_q m_q sum_{t in T_o} p_qt h_t / sum_q m_q sum_{t in T_o} p_qt     (m: the box's share of cell q)

must let a linear head name the stated pattern and body colour. So the split of the object's attention among its
words must reach the words that state them (EOS and padding, which see the whole caption, are left out: the pixel
grounding keeps them out of the box). The states are detached: the readout moves where the cells look, not what the
encoder writes (the attribute heads of attributes.py do that).

    readout = AttentionReadout(tokenizer, hidden_size)
    loss = readout.loss(recorder.maps, states, specs, captions)   # cross-entropy, 0 where nothing is stated
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attributes import attribute_values, attribute_words
from .grounding import WORD_PATTERN, CaptionGrounding, box_coverage, object_boxes, word_objects

READ = ("pattern", "colour")  # colour: the body colour, named before the noun


@dataclass(frozen=True)
class ReadoutTarget:
    sample: int
    box: tuple[float, float, float]  # (centre x, centre y, side) in pixels
    tokens: tuple[int, ...]  # positions of the object's grounded tokens
    attribute: str
    value: int


def readout_targets(grounding: CaptionGrounding, specs: list, captions: list[str]) -> list[ReadoutTarget]:
    """One target per object and stated attribute: its pattern (from a pattern word anywhere in its noun phrase) and
    its body colour (a colour word before its noun; after it a colour is the pattern's or the accessory's)."""
    targets = []
    for sample, (spec, caption) in enumerate(zip(specs, captions)):
        if not caption:
            continue  # dropped for classifier-free guidance
        words = WORD_PATTERN.findall(caption.lower())
        boxes = object_boxes(spec)
        tokens: dict[int, list[int]] = {}
        for token, owner, _ in grounding.token_roles(spec, caption):
            tokens.setdefault(owner, []).append(token)
        found: dict[tuple[int, str], int] = {}
        owners = word_objects(spec, words)
        for index, noun, attribute, value in attribute_words(spec, words):
            if attribute == "colour" and noun is None:
                continue
            found.setdefault((owners[index], attribute), value)
        targets += [
            ReadoutTarget(sample, boxes[owner], tuple(tokens[owner]), name, value)
            for (owner, name), value in found.items()
            if owner in tokens
        ]
    return targets


def box_readout(attention: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """r = sum_q m_q sum_{t in T_o} p_qt h_t / sum_q m_q sum_{t in T_o} p_qt: (objects, hidden) from attention
    (objects, queries, tokens), states (objects, tokens, hidden), box masks (objects, queries) and the object's own
    tokens (objects, tokens; 1 or 0)."""
    gathered = torch.einsum("oq,oqt->ot", mask, attention) * own
    gathered = gathered / gathered.sum(1, keepdim=True).clamp(min=1e-8)
    return torch.einsum("ot,oth->oh", gathered, states)


class AttentionReadout(torch.nn.Module):
    """One linear head per read attribute over the attention-weighted text states of an object's box."""

    def __init__(self, tokenizer, hidden_size: int):
        super().__init__()
        self.grounding = CaptionGrounding(tokenizer)
        values = attribute_values()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(hidden_size, len(values[name])) for name in READ})

    def loss(self, maps: list[torch.Tensor], states: torch.Tensor, specs: list, captions: list[str]) -> torch.Tensor:
        """Mean over layers and attributes of the heads' cross-entropy; 0 where no object states one."""
        targets = readout_targets(self.grounding, specs, captions)
        if not targets:
            return states.new_zeros(()).float()
        device = states.device
        samples = torch.tensor([t.sample for t in targets], device=device)
        text = states.detach().float()[samples]
        own = torch.zeros(len(targets), states.shape[1], device=device)
        for row, target in enumerate(targets):
            own[row, list(target.tokens)] = 1.0
        losses = []
        for layer in maps:
            side = int(round(layer.shape[1] ** 0.5))
            masks = torch.stack([box_coverage(*t.box, side).flatten() for t in targets]).to(device)
            readout = box_readout(layer[samples].float(), text, masks, own)
            for name in READ:
                rows = [i for i, t in enumerate(targets) if t.attribute == name]
                if rows:
                    values = torch.tensor([targets[i].value for i in rows], device=device)
                    losses.append(F.cross_entropy(self.heads[name](readout[rows]), values))
        return torch.stack(losses).mean()
