"""A user's prompt in the service's own tokens: each <token> of the user's concepts becomes its concept's token in
the running pipeline (perfusion.service.concept_cache); any other <token> is refused, so no user can reach a concept
that is not theirs."""

from __future__ import annotations

from perfusion.pipeline.text import CONCEPT_TOKEN_PATTERN


class PromptError(ValueError):
    """A prompt the service refuses."""


def concepts_in(prompt: str, owned: dict[str, int]) -> list[int]:
    """The ids of the user's concepts (token -> id) that ``prompt`` uses, in order of first use."""
    used: list[int] = []
    for token in CONCEPT_TOKEN_PATTERN.findall(prompt):
        if token not in owned:
            listing = ", ".join(sorted(owned)) or "none yet"
            raise PromptError(f"unknown concept {token} in the prompt (your concepts: {listing})")
        if owned[token] not in used:
            used.append(owned[token])
    return used


def rewrite(prompt: str, owned: dict[str, int], internal) -> str:
    """``prompt`` with each of the user's tokens replaced by ``internal(concept_id)``."""
    return CONCEPT_TOKEN_PATTERN.sub(lambda match: internal(owned[match.group(0)]), prompt)
