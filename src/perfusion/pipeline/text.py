"""Text-side glue: tokenising prompts, encoding them as the pipeline does, finding concept tokens."""

from __future__ import annotations

import re

import torch

CONCEPT_TOKEN_PATTERN = re.compile(r"<[^<>\s]+>")


def prompt_tokens(prompt: str) -> list[str]:
    """The ``<token>``-shaped words of a prompt, in order."""
    return CONCEPT_TOKEN_PATTERN.findall(prompt)


def tokenize(tokenizer, prompts: list[str], padding: str = "max_length") -> torch.Tensor:
    """Token ids exactly as diffusers' Stable Diffusion pipelines make them (padded and truncated to the tokenizer's model_max_length: 77 on SD)."""
    return tokenizer(
        prompts, padding=padding, max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def cut_off_tokens(tokenizer, prompt: str, tokens: list[str]) -> dict[str, tuple[int, int]]:
    """The tokens of ``tokens`` with an occurrence past the tokenizer's length limit (which ``tokenize`` cuts, as
    the pipeline does): token -> (occurrences cut off, occurrences in the prompt)."""
    full = tokenizer(prompt, truncation=False, verbose=False).input_ids  # verbose: no "longer than" log line
    kept = tokenize(tokenizer, [prompt])[0].tolist()
    cut = {}
    for token in dict.fromkeys(tokens):
        token_id = tokenizer.convert_tokens_to_ids(token)
        total = full.count(token_id)
        if total > kept.count(token_id):
            cut[token] = (total - kept.count(token_id), total)
    return cut


def encode(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The encodings a Stable Diffusion UNet is conditioned on: the text encoder's last hidden state."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


def content_mask(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True at every position up to and including the first end-of-text token; HF CLIP pads with EOS, not 0."""
    is_eos = input_ids == eos_token_id
    after_first_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return ~after_first_eos


def supercategory_substitution(
    input_ids: torch.Tensor, replacements: dict[int, list[int]], eos_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each concept token id by its supercategory's ids, keeping the length.

    Returns the new ids (B, T) and, for every original position, the index of its counterpart in them
    (a concept token maps to its supercategory's last token), so that keys computed from the new ids
    line up with values computed from the original ones.
    """
    length = input_ids.shape[-1]
    new_rows, index_rows = [], []
    for row in input_ids.tolist():
        new_row, index_row = [], []
        for token_id in row:
            new_row.extend(replacements.get(token_id, [token_id]))
            index_row.append(len(new_row) - 1)
        if len(new_row) > length:  # a longer supercategory pushed the tail out
            end = new_row.index(eos_token_id) if eos_token_id in new_row else length
            # only padding pushed out: cut it (SD 2.x pads with "!", which must stay "!"); else keep the end-of-text
            new_row = new_row[:length] if end < length else new_row[: length - 1] + [eos_token_id]
        new_row += [row[-1]] * (length - len(new_row))  # pad as the original row was padded (EOS on SD1, "!" on SD2)
        new_rows.append(new_row)
        index_rows.append([min(index, length - 1) for index in index_row])
    return torch.tensor(new_rows, dtype=input_ids.dtype), torch.tensor(index_rows, dtype=torch.long)


def gate_scope(input_ids: torch.Tensor, eos_token_id: int, plain_ids: list[int], scope: str) -> torch.Tensor:
    """(T,) bool: where a concept's edit may act in one row of ids. "all": every position (the paper's edit);
    "except-word": every position but the concept's plain supercategory word ("<mycat> next to a cat": the cat stays
    a cat); "prompt": besides, only the prompt's words and its first end-of-text token, not the padding after it
    (whose share of the gate grows as the prompt shortens)."""
    allowed = torch.ones(input_ids.shape[-1], dtype=torch.bool)
    if scope != "all":
        allowed &= ~word_positions(input_ids[None], plain_ids)[0]
    if scope == "prompt":
        allowed &= content_mask(input_ids[None], eos_token_id)[0]
    return allowed


def word_positions(input_ids: torch.Tensor, word_ids: list[int], last_only: bool = False) -> torch.Tensor:
    """(B, T) bool on each occurrence of a word (a run of ``word_ids``).

    ``last_only`` marks just its last token: what a causal encoder's encoding of the whole word sits on.
    """
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    width = len(word_ids)
    for row, sequence in enumerate(input_ids.tolist()):
        for start in range(len(sequence) - width + 1):
            if sequence[start : start + width] == word_ids:
                positions[row, start + width - 1 if last_only else start : start + width] = True
    return positions
