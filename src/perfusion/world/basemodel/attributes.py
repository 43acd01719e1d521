"""Attribute supervision of the base model's text encoder: linear heads read each stated colour and pattern from the
encoder's output, at the word's own token and at its object's noun when the noun comes after it; a multi-label head
reads which shape words ("long-tailed", "slim") its object has been given so far, at each and at the noun after them.

Trained jointly with the UNet, the text encoder learned only what the UNet already used: on the families model it
sent "striped", "spotted", "patched", "banded" and "plain" to encodings with cosine 0.95-0.99 (their input embeddings
0.1-0.4), and the noun's encoding did not change with the words before it (cosine >= 0.98 whatever the colour or
pattern), so a pattern word could not be read by any UNet (docs/basemodel.md). Shape words fared the same: the noun
after "short-tailed" and after "long-tailed" came out at cosine 0.98-1.00, and shape words were obeyed 0.55 of the
time where chance is 0.5. SD's frozen CLIP brings such
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


def shape_words(spec, words: list[str]) -> list[tuple[int, int | None, int]]:
    """The families world's stated shape words (families.captions.shape_words); none in other worlds."""
    if not hasattr(spec, "placements"):
        return []
    from perfusion.world.families.captions import shape_words as family_shape_words

    return family_shape_words(spec, words)


def shape_phrases() -> tuple[str, ...]:
    from perfusion.world.families.captions import SHAPE_PHRASES

    return SHAPE_PHRASES


class AttributeSupervision(torch.nn.Module):
    """One linear head per attribute over the text encoder's output states."""

    def __init__(self, tokenizer, hidden_size: int):
        super().__init__()
        self.pieces = CaptionGrounding(tokenizer)  # how many tokens each word takes
        self.limit = tokenizer.model_max_length - 1  # the last position holds EOS
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden_size, len(values)) for name, values in attribute_values().items()}
        )
        self.heads["shape"] = torch.nn.Linear(hidden_size, len(shape_phrases()))

    def targets(self, specs: list, captions: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per attribute: (sample, token position, value) of every token that should state it: the last token of the
        attribute's word, and of its object's noun when the noun comes after it."""
        found: dict[str, list[tuple[int, int, int]]] = {name: [] for name in attribute_values()}
        for sample, words, ends in self._captions(captions):
            for word, noun, attribute, value in attribute_words(specs[sample], words):
                for index in (word, noun):
                    if index is not None and ends[index] < self.limit:
                        found[attribute].append((sample, ends[index], value))
        return {
            name: tuple(torch.tensor(column, dtype=torch.long) for column in zip(*rows))
            for name, rows in found.items()
            if rows
        }

    def shape_targets(self, specs: list, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(samples, token positions, multi-hot over SHAPE_PHRASES): at each shape word's last token, the shape words
        of its object up to it; at the object's noun after them, all of them (the encoder is causal)."""
        rows: dict[tuple[int, int], set[int]] = {}
        for sample, words, ends in self._captions(captions):
            stated: dict[int | None, set[int]] = {}
            for end, noun, phrase in shape_words(specs[sample], words):
                so_far = stated.setdefault(noun, set())
                so_far.add(phrase)
                for index in (end, noun):
                    if index is not None and ends[index] < self.limit:
                        rows.setdefault((sample, ends[index]), set()).update(so_far)
        labels = torch.zeros(len(rows), self.heads["shape"].out_features)
        for row, phrases in enumerate(rows.values()):
            labels[row, list(phrases)] = 1.0
        samples = torch.tensor([sample for sample, _ in rows], dtype=torch.long)
        positions = torch.tensor([position for _, position in rows], dtype=torch.long)
        return samples, positions, labels

    def _captions(self, captions: list[str]):
        """(sample, words, each word's last token position) of every caption that is not empty (position 0 is BOS)."""
        for sample, caption in enumerate(captions):
            if not caption:
                continue  # dropped for classifier-free guidance
            words = WORD_PATTERN.findall(caption.lower())
            ends, position = [], 0
            for count in self.pieces.word_token_counts(words):
                position += count
                ends.append(position)
            yield sample, words, ends

    def loss(self, states: torch.Tensor, specs: list, captions: list[str]) -> torch.Tensor:
        """Mean over attributes of the heads' cross-entropy on the tokens that state them (binary cross-entropy per
        shape word for the shape head); 0 where none do."""
        device, losses = states.device, []
        for name, (samples, positions, values) in self.targets(specs, captions).items():
            logits = self.heads[name](states[samples.to(device), positions.to(device)].float())
            losses.append(F.cross_entropy(logits, values.to(device)))
        samples, positions, labels = self.shape_targets(specs, captions)
        if len(samples):
            logits = self.heads["shape"](states[samples.to(device), positions.to(device)].float())
            losses.append(F.binary_cross_entropy_with_logits(logits, labels.to(device)))
        return torch.stack(losses).mean() if losses else states.new_zeros(()).float()
