"""The concepts installed in a pipeline and their settings: each concept's gate, key locking, the composition mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perfusion.composition.regions import RegionalCall
from perfusion.concept.format import Concept


@dataclass
class InstalledConcept:
    concept: Concept  # the registry's own copy (perfusion.pipeline.loader copies what a caller gives)
    supercategory_ids: list[list[int]]  # the supercategory word's ids in each tower's tokenizer
    beta: float
    tau: float
    # Where its edit acts (perfusion.pipeline.text.gate_scope), as it was trained: "except-word", "prompt", or "all"
    # (every position, the paper's edit, and every concept file made before the scope was recorded)
    scope: str = "all"


Gates = tuple[tuple[str, float, float], ...]  # (token, beta, tau) of each concept of one prompt row


class PromptCountError(ValueError):
    """Per-prompt settings given for another number of prompts than the text encoder was called with."""


@dataclass
class RuntimeSettings:
    gates: dict[str, tuple[float, float]]  # token -> (beta, tau)
    global_lock: bool
    regional: RegionalCall | None
    prompt_gates: list[dict[str, tuple[float | None, float | None]]] | None = None


class ConceptRegistry:
    """Loaded concepts by token, in loading order; token ids are looked up in the tokenizers (one per text encoder),
    never cached."""

    def __init__(self, tokenizers: list):
        self.tokenizers = list(tokenizers)
        self.concepts: dict[str, InstalledConcept] = {}
        self.global_lock = False
        self.regional: RegionalCall | None = None  # None: the paper's joint edit
        # Per-prompt gates for one call: entry n, token -> (beta, tau) (None: the concept's own), for prompt n of
        # each text-encoder call; None: every row reads the concepts' own gates, live
        self.prompt_gates: list[dict[str, tuple[float | None, float | None]]] | None = None
        self.version = 0  # counts the changes to concepts and gates: what was built from them is stale when it moved

    def __getitem__(self, token: str) -> InstalledConcept:
        return self.concepts[token]

    def add(self, concept: Concept) -> None:
        ids = [tokenizer(concept.supercategory, add_special_tokens=False).input_ids for tokenizer in self.tokenizers]
        scope = concept.training.get("gate_scope", "all")
        self.concepts[concept.token] = InstalledConcept(concept, ids, float(concept.beta), float(concept.tau), scope)
        self.version += 1

    def remove(self, token: str) -> None:
        del self.concepts[token]
        self.version += 1

    def token_id(self, token: str, tower: int = 0) -> int | None:
        """The token's id in a tower's tokenizer, or None when it no longer has it (a caller's
        ``unload_textual_inversion()`` removes every added token; CLIP would map it to its unknown token, the
        end-of-text one)."""
        tokenizer = self.tokenizers[tower]
        token_id = tokenizer.convert_tokens_to_ids(token)
        return token_id if tokenizer.convert_ids_to_tokens(token_id) == token else None

    def tokens_by_id(self, tower: int = 0) -> dict[int, str]:
        ids = {token: self.token_id(token, tower) for token in self.concepts}
        return {token_id: token for token, token_id in ids.items() if token_id is not None}

    def supercategory_replacements(self, tower: int = 0) -> dict[int, list[int]]:
        """Each installed concept's token id -> its supercategory word's ids, in one tower's tokenizer."""
        return {
            token_id: self.concepts[token].supercategory_ids[tower]
            for token_id, token in self.tokens_by_id(tower).items()
        }

    # -- settings ---------------------------------------------------------------------------------
    def set_options(self, token: str, beta: float | None = None, tau: float | None = None) -> None:
        installed = self.concepts[token]
        installed.beta = installed.beta if beta is None else float(beta)
        installed.tau = installed.tau if tau is None else float(tau)
        self.version += 1

    def gates(self, tokens: tuple[str, ...], device, fixed: Gates | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(betas, taus) of ``tokens``: ``fixed`` (a row's own, set per prompt) or the concepts' own, read live (a
        settings change needs no plan rebuilt)."""
        if fixed is not None:
            by_token = {token: (beta, tau) for token, beta, tau in fixed}
            pairs = [by_token[token] for token in tokens]
        else:
            pairs = [(self.concepts[token].beta, self.concepts[token].tau) for token in tokens]
        return (
            torch.tensor([beta for beta, _ in pairs], device=device),
            torch.tensor([tau for _, tau in pairs], device=device),
        )

    def row_gates(self, index: int, count: int, tokens: tuple[str, ...]) -> Gates | None:
        """The gates of prompt ``index`` of a text-encoder call of ``count`` prompts, fixed now; None without
        per-prompt settings (the row reads the concepts' own, live)."""
        if self.prompt_gates is None:
            return None
        if len(self.prompt_gates) != count:
            raise PromptCountError(
                f"per-prompt concept settings for {len(self.prompt_gates)} prompts, but the text encoder was given "
                f"{count}: give one entry per prompt"
            )
        given = self.prompt_gates[index]
        gates = []
        for token in tokens:
            beta, tau = given.get(token, (None, None))
            installed = self.concepts[token]
            gates.append((token, installed.beta if beta is None else beta, installed.tau if tau is None else tau))
        return tuple(gates)

    def settings(self) -> RuntimeSettings:
        """Everything a generation call may change, to be put back with ``restore``."""
        gates = {token: (installed.beta, installed.tau) for token, installed in self.concepts.items()}
        return RuntimeSettings(gates, self.global_lock, self.regional, self.prompt_gates)

    def restore(self, settings: RuntimeSettings) -> None:
        for token, (beta, tau) in settings.gates.items():
            if token in self.concepts:
                self.set_options(token, beta=beta, tau=tau)
        self.global_lock, self.regional = settings.global_lock, settings.regional
        self.prompt_gates = settings.prompt_gates
