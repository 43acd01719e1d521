"""Attribute supervision of the base model's text encoder: linear heads read each stated colour and pattern from the
encoder's output, at the word's own token and at its object's noun when the noun comes after it.

Trained jointly with the UNet, the text encoder learned only what the UNet already used: on the families model it
sent "striped", "spotted", "patched", "banded" and "plain" to encodings with cosine 0.95-0.99 (their input embeddings
0.1-0.4), and the noun's encoding did not change with the words before it (cosine >= 0.98 whatever the colour or
pattern), so a pattern word could not be read by any UNet (docs/basemodel.md). SD's frozen CLIP brings such
distinctions from its contrastive training; this asks for them directly, from the captions' ground truth.

    supervision = AttributeSupervision(tokenizer, hidden_size)
    loss = supervision.loss(encoder_states, specs, captions)   # cross-entropy, 0 where no attribute is stated
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grounding import WORD_PATTERN, CaptionGrounding


def attribute_words(spec, words: list[str]) -> list[tuple[int, int | None, str, int]]:
    """The families world's stated attribute words (families.captions.attribute_words); none in other worlds."""
    if not hasattr(spec, "placements"):
        return []
    from perfusion.world.families.captions import attribute_words as family_attribute_words

    return family_attribute_words(spec, words)


def attribute_values() -> dict[str, tuple[str, ...]]:
    from perfusion.world.families.captions import ATTRIBUTE_VALUES

    return ATTRIBUTE_VALUES


class AttributeSupervision(torch.nn.Module):
    """One linear head per attribute over the text encoder's output states."""

    def __init__(self, tokenizer, hidden_size: int):
        super().__init__()
        self.pieces = CaptionGrounding(tokenizer)  # how many tokens each word takes
        self.limit = tokenizer.model_max_length - 1  # the last position holds EOS
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden_size, len(values)) for name, values in attribute_values().items()}
        )

    def targets(self, specs: list, captions: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per attribute: (sample, token position, value) of every token that should state it: the last token of the
        attribute's word, and of its object's noun when the noun comes after it."""
        found: dict[str, list[tuple[int, int, int]]] = {name: [] for name in self.heads}
        for sample, (spec, caption) in enumerate(zip(specs, captions)):
            if not caption:
                continue  # dropped for classifier-free guidance
            words = WORD_PATTERN.findall(caption.lower())
            ends, position = [], 0  # each word's last token (position 0 is BOS)
            for count in self.pieces.word_token_counts(words):
                position += count
                ends.append(position)
            for word, noun, attribute, value in attribute_words(spec, words):
                for index in (word, noun):
                    if index is not None and ends[index] < self.limit:
                        found[attribute].append((sample, ends[index], value))
        return {
            name: tuple(torch.tensor(column, dtype=torch.long) for column in zip(*rows))
            for name, rows in found.items()
            if rows
        }

    def loss(self, states: torch.Tensor, specs: list, captions: list[str]) -> torch.Tensor:
        """Mean over attributes of the heads' cross-entropy on the tokens that state them; 0 where none do."""
        losses = []
        for name, (samples, positions, values) in self.targets(specs, captions).items():
            logits = self.heads[name](states[samples.to(states.device), positions.to(states.device)].float())
            losses.append(F.cross_entropy(logits, values.to(states.device)))
        return torch.stack(losses).mean() if losses else states.new_zeros(()).float()
