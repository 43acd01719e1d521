"""Which concepts act on which prompt rows: the text-encoder and UNet hooks.

The text encoder's forward hook remembers every encoded prompt that holds a concept token (with the other hidden
states of the same call, since a pipeline may condition the UNet on one of them: SDXL's penultimate layer, SD's
clip_skip). The UNet's forward pre-hook matches the rows it is given against them (so classifier-free guidance,
repeated images and any pipeline's batching are handled without knowing how a pipeline builds its batch) and leaves
the call's ``CallContext`` for the cross-attention processors. Under regional composition (perfusion.regions) the
pre-hook hands each row with concepts to the regional call, which splits it and merges it back after the UNet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from perfusion.regions import RegionalCall, SplitRow, split_row
from perfusion.registry import ConceptRegistry
from perfusion.text import encode, supercategory_substitution

REGISTRY_ROWS = 64  # prompts remembered between text encoding and denoising
PROBE_FEATURES = 4  # features per position compared before a full equality check


@dataclass
class EncodedPrompt:
    encodings: torch.Tensor  # (T, d), detached
    tokens: tuple[str, ...]
    key_encodings: torch.Tensor | None  # the supercategory re-encoding, under global key locking
    split: SplitRow | None = None  # the plain and per-concept rows, under regional composition
    alternatives: tuple[torch.Tensor, ...] = ()  # the row's other hidden states a pipeline may hand the UNet instead


@dataclass
class CallContext:
    groups: list[tuple[tuple[str, ...], torch.Tensor]]  # (concept tokens, batch rows using exactly them)
    key_encodings: torch.Tensor | None  # (B, T, d) keys' input under global locking
    regional: RegionalCall | None = None  # regional composition's plan for this call


def other_hidden_states(text_encoder, output) -> list[torch.Tensor]:
    """The hidden states besides the last output that a pipeline may hand the UNet: each layer's (SDXL takes the
    penultimate), and each after the encoder's final layer norm (SD's clip_skip), when the call returned them."""
    hidden_states = getattr(output, "hidden_states", None)
    if not hidden_states:
        return []
    text_model = getattr(text_encoder, "text_model", text_encoder)
    norm = getattr(text_model, "final_layer_norm", None)
    with torch.no_grad():
        normed = [norm(states) for states in hidden_states] if norm is not None else []
    return [*hidden_states, *normed]


def same(candidate: torch.Tensor, state: torch.Tensor, probe: torch.Tensor) -> bool:
    """Exact equality, tried on a few features first."""
    candidate = candidate.to(state.device, state.dtype)
    if candidate.shape != state.shape or not torch.equal(candidate[..., :PROBE_FEATURES], probe):
        return False
    return torch.equal(candidate, state.detach())


class PromptRouter:
    entry_type = EncodedPrompt  # what regions.split_row builds each concept's own row as

    def __init__(self, registry: ConceptRegistry, text_encoder, tokenizer, on_prompt=None):
        self.registry, self.text_encoder, self.tokenizer = registry, text_encoder, tokenizer
        self.on_prompt = on_prompt  # called when a prompt with a concept is encoded (a new generation call)
        self.remembered: deque[EncodedPrompt] = deque(maxlen=REGISTRY_ROWS)
        self.context: CallContext | None = None
        self.hooks: list = []
        self._encoding_internally = False

    # -- remembering encoded prompts ------------------------------------------------------------
    def remember(self, input_ids: torch.Tensor, encodings: torch.Tensor, alternatives=list) -> None:
        """Keep every encoded row that holds a concept token; ``alternatives()`` gives the other (B, T, d) hidden
        states of the same call, asked for only when a row holds a concept."""
        by_id = self.registry.tokens_by_id()
        rows = [tuple(by_id[i] for i in row if i in by_id) for row in input_ids.tolist()]
        wanted = [index for index, tokens in enumerate(rows) if tokens]
        if not wanted:
            return
        if self.on_prompt is not None:
            self.on_prompt()
        key_encodings = self.supercategory_encodings(input_ids[wanted]) if self.registry.global_lock else None
        regional, alternatives = self.registry.regional, alternatives()
        for position, index in enumerate(wanted):
            tokens = tuple(token for token in self.registry.concepts if token in rows[index])
            keys = None if key_encodings is None else key_encodings[position]
            split = None
            if regional is not None and len(tokens) >= regional.config.min_concepts:
                split = split_row(self, input_ids[index], tokens)
            others = tuple(states[index].detach() for states in alternatives if states.shape == encodings.shape)
            self.remembered.append(EncodedPrompt(encodings[index].detach(), tokens, keys, split, others))

    def encode_quietly(self, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's output for ``ids``, not remembered (the router's own encodings)."""
        self._encoding_internally = True
        try:
            return encode(self.text_encoder, ids).detach()
        finally:
            self._encoding_internally = False

    @torch.no_grad()
    def supercategory_encodings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Global key locking: encode with each concept token replaced by its supercategory word."""
        replacements = self.registry.supercategory_replacements()
        super_ids, index = supercategory_substitution(input_ids, replacements, self.tokenizer.eos_token_id)
        encodings = self.encode_quietly(super_ids)
        return torch.gather(encodings, 1, index.to(encodings.device)[..., None].expand(-1, -1, encodings.shape[-1]))

    # -- matching the UNet's rows -----------------------------------------------------------------
    def find(self, states: torch.Tensor | None) -> list[EncodedPrompt | None] | None:
        """Each row of ``states`` among the remembered prompts (None where it is not one); None when none is."""
        if states is None or not self.remembered or states.ndim != 3:
            return None
        entries = list(self.remembered)
        probes = states[..., :PROBE_FEATURES]
        found: list[EncodedPrompt | None] = [None] * states.shape[0]
        for row in range(states.shape[0]):
            for entry in reversed(entries):
                if any(same(candidate, states[row], probes[row]) for candidate in (entry.encodings, *entry.alternatives)):
                    found[row] = entry
                    break
        return found if any(entry is not None for entry in found) else None

    @staticmethod
    def context_for(entries: list[EncodedPrompt | None], states: torch.Tensor, regional=None) -> CallContext:
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, entry in enumerate(entries):
            if entry is not None:
                groups.setdefault(entry.tokens, []).append(row)
        key_encodings = None
        if any(entry is not None and entry.key_encodings is not None for entry in entries):
            key_encodings = torch.stack(
                [states[row] if entry is None or entry.key_encodings is None
                 else entry.key_encodings.to(states.device, states.dtype) for row, entry in enumerate(entries)]
            )  # fmt: skip
        rows = [(tokens, torch.tensor(indices, device=states.device)) for tokens, indices in groups.items()]
        return CallContext(rows, key_encodings, regional)

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, text_encoder, unet) -> None:
        self.hooks = [
            text_encoder.register_forward_hook(self._after_text_encoder, with_kwargs=True),
            unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
            unet.register_forward_hook(self._after_unet),
        ]

    def detach(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self.context = None
        self.remembered.clear()

    def _after_text_encoder(self, module, args, kwargs, output):
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is not None and self.registry.concepts and not self._encoding_internally:
            self.remember(input_ids, output[0], lambda: other_hidden_states(module, output))

    def _before_unet(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        entries = self.find(states)
        regional = self.registry.regional
        if entries is None:
            self.context = None
            return None
        if regional is None or all(entry is None or entry.split is None for entry in entries):
            self.context = self.context_for(entries, states)
            return None
        args, kwargs, entries = regional.expand(args, kwargs, entries, states)
        states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        self.context = self.context_for(entries, states, regional)
        return args, kwargs

    def _after_unet(self, module, args, output):
        context, self.context = self.context, None
        if context is not None and context.regional is not None:
            return context.regional.merge(output)
        return None
