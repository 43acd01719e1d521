"""The state Perfusion keeps inside a pipeline, in three parts with one job each:

- the **registry** (perfusion.pipeline.registry, private): the installed concepts and their settings;
- the **router** (perfusion.pipeline.router): the text-encoder and UNet hooks, and which concepts act on which rows;
- the **plan cache** (perfusion.pipeline.plans): what the edit precomputes, dropped only by what changed.

The cross-attention processors (perfusion.pipeline.processor) read the call's context, plans, gates and value targets here.
"""

from __future__ import annotations

import torch

from perfusion.concept.format import Concept
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.plans import LayerPlan, PlanCache, linear_part
from perfusion.pipeline.registry import ConceptRegistry, RuntimeSettings
from perfusion.pipeline.router import CallContext, PromptRouter

__all__ = ["PerfusionRuntime", "linear_part"]


class PerfusionRuntime:
    def __init__(self, text: TextConditioning, inverse_covariance: torch.Tensor, base_fingerprint: str):
        self.text = text
        self._registry = ConceptRegistry([tower.tokenizer for tower in text.towers])
        self.plans = PlanCache(inverse_covariance)
        # W_K u and W_V u are read off the projections, which a LoRA loaded or fused between calls changes: the
        # layer plans are rebuilt at each new prompt (a few small products per layer), the span plans are kept.
        self.router = PromptRouter(self._registry, text, on_prompt=self.plans.clear_layers)
        self.base_fingerprint = base_fingerprint
        self.corpus: str | None = None  # which caption corpus C came from (covariance.corpus_label); None: given
        self.warned_processors = False  # the one warning that processors set after loading were wrapped again

    @classmethod
    def of(cls, pipe) -> "PerfusionRuntime | None":
        """The pipeline's Perfusion state: the runtime its edit processors share; None before any concept is loaded."""
        from perfusion.pipeline.processor import PerfusionAttnProcessor

        for processor in pipe.unet.attn_processors.values():
            if isinstance(processor, PerfusionAttnProcessor):
                return processor.runtime
        return None

    @property
    def inverse_covariance(self) -> torch.Tensor:
        return self.plans.inverse_covariance

    @property
    def concepts(self):
        return self._registry.concepts

    @property
    def context(self) -> CallContext | None:
        return self.router.context

    # -- concepts and their settings --------------------------------------------------------------
    def add(self, concept: Concept) -> None:
        self._registry.add(concept)
        self.plans.drop(concept.token)

    def remove(self, token: str) -> None:
        """Unloading renumbers the tokenizer's added tokens: the rows remembered before it are forgotten."""
        self._registry.remove(token)
        self.plans.drop(token)
        self.router.forget()

    def set_options(self, token: str, beta: float | None = None, tau: float | None = None) -> None:
        self._registry.set_options(token, beta=beta, tau=tau)  # gates are read live: no plan is stale

    def set_call_settings(self, global_lock: bool | None, regional, prompt_gates) -> None:
        """Key locking (None keeps it), the composition mode (a RegionalCall, None: joint) and per-prompt gates (for one
        call; None: none)."""
        if global_lock is not None:
            self._registry.global_lock = bool(global_lock)
        self._registry.regional = regional
        self._registry.prompt_gates = prompt_gates

    @property
    def regional(self):
        return self._registry.regional

    @property
    def prompt_gates(self):
        return self._registry.prompt_gates

    def supercategory_replacements(self, tower: int = 0) -> dict[int, list[int]]:
        """Each loaded concept's token id -> its supercategory word's ids, in one text encoder's tokenizer."""
        return self._registry.supercategory_replacements(tower)

    def token_id(self, token: str, tower: int = 0) -> int | None:
        return self._registry.token_id(token, tower)

    @property
    def settings_version(self) -> int:
        """Counts the changes to concepts and gates: what was built from them is stale when it moved."""
        return self._registry.version

    def settings(self) -> RuntimeSettings:
        return self._registry.settings()

    def restore(self, settings: RuntimeSettings) -> None:
        self._registry.restore(settings)

    # -- training's entry -------------------------------------------------------------------------
    def set_concept_encoding(self, token: str, encoding: torch.Tensor) -> None:
        """Training moves i* every step (EMA): the span and layer plans of the sets holding it are stale then (the
        Cholesky factor of C^-1 is not)."""
        self._registry[token].concept.concept_encoding = encoding.detach()
        self.plans.drop(token)

    def train_value_targets(self, token: str, value_targets: dict[str, torch.Tensor]) -> None:
        """Training hands its trainable o*_V tensors over: the edit reads them at every call, so each optimizer step
        acts at once."""
        installed = self._registry[token].concept
        if set(value_targets) != set(installed.value_targets):
            raise ValueError(f"{token}: the trained value targets' layers differ from the installed concept's")
        installed.value_targets = dict(value_targets)

    # -- what the processors read ---------------------------------------------------------------
    def layer_plan(self, tokens: tuple[str, ...], layer: str, attn, device) -> LayerPlan:
        installed = [self._registry[token].concept for token in tokens]

        def encodings():
            return torch.stack([concept.concept_encoding.detach().cpu() for concept in installed])

        def supercategory():
            return torch.stack([concept.supercategory_encoding for concept in installed])

        return self.plans.layer(tokens, layer, attn, encodings, supercategory, device)

    def gates(self, tokens: tuple[str, ...], device, fixed=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._registry.gates(tokens, device, fixed)

    def value_targets(self, tokens: tuple[str, ...], layer: str, device) -> torch.Tensor:
        """o*_V of each concept, (out, N); read at each call while training (which updates them), kept for a call's
        denoising steps otherwise (perfusion.pipeline.processor)."""
        return torch.stack([self._registry[token].concept.value_targets[layer].to(device) for token in tokens], -1)

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, unet) -> None:
        self.router.attach(unet)

    def detach(self) -> None:
        self.router.detach()
