"""A new concept token: its checks, and its input embedding as a trained vector."""

from __future__ import annotations

import torch

from perfusion.concept.format import MAX_TOKEN_LENGTH
from perfusion.pipeline.text import CONCEPT_TOKEN_PATTERN


class TokenError(ValueError):
    """A token that cannot be added."""


def check_new_token(tokenizer, token: str) -> None:
    if not CONCEPT_TOKEN_PATTERN.fullmatch(token):
        raise TokenError(f"the token must look like <name>, got {token!r}")
    if len(token) > MAX_TOKEN_LENGTH:  # a file with a longer one would not load
        raise TokenError(f"the token is {len(token)} characters long (at most {MAX_TOKEN_LENGTH})")
    if token in tokenizer.get_vocab():
        raise TokenError(f"{token} is already a word of this tokenizer")


def substitute_token_embedding(text_encoder, token_id: int, vector: torch.Tensor):
    """Route the token's input embedding through ``vector`` (a trained Parameter); the table stays frozen.

    Returns the hook handle; ``.remove()`` ends it.
    """

    def substitute(module, args, output):
        return torch.where((args[0] == token_id)[..., None], vector.to(output.dtype), output)

    return text_encoder.get_input_embeddings().register_forward_hook(substitute)
