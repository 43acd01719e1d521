"""The state Perfusion keeps inside a pipeline: installed concepts, their settings, and which prompt rows use them.

The text encoder's forward hook remembers every encoded prompt that holds a concept token; the UNet's
forward pre-hook matches the rows it is given against them (so classifier-free guidance, repeated
images and any pipeline's batching are handled without knowing how a pipeline builds its batch) and
tells the cross-attention processors which concepts act on which rows. Under regional composition
(perfusion.regions) the pre-hook also splits each row with concepts into its plain and per-concept rows, and the
forward hook merges them back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from perfusion.concept import Concept
from perfusion.method import composition_basis, similarity_readout
from perfusion.regions import RegionalCall, SplitRow
from perfusion.text import encode, supercategory_substitution

REGISTRY_ROWS = 64  # prompts remembered between text encoding and denoising
PROBE_FEATURES = 4  # features per position compared before a full equality check


@dataclass
class InstalledConcept:
    concept: Concept
    token_id: int
    supercategory_ids: list[int]
    beta: float
    tau: float


@dataclass
class RuntimeSettings:
    gates: dict[str, tuple[float, float]]  # token -> (beta, tau)
    global_lock: bool
    regional: RegionalCall | None


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


@dataclass
class SpanPlan:
    basis: torch.Tensor  # u_n, (k, d) float64
    basis_readout: torch.Tensor  # C^-1 u_n, (d, k)
    similarity_readouts: torch.Tensor  # (d, N)
    betas: torch.Tensor
    taus: torch.Tensor


@dataclass
class LayerPlan:
    basis_readout: torch.Tensor
    similarity_readouts: torch.Tensor
    betas: torch.Tensor
    taus: torch.Tensor
    key_basis: torch.Tensor  # W_K u_n, (out, k)
    value_basis: torch.Tensor  # W_V u_n, (out, k)
    key_targets: torch.Tensor  # o*_K = W_K i*_super, (out, N)


def linear_part(projection: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """W x for a projection that may carry a bias or a LoRA wrapper: f(x) - f(0), as (out, n) float32."""
    weight = next(projection.parameters())
    inputs = inputs.to(weight.device, weight.dtype)
    return (projection(inputs) - projection(torch.zeros_like(inputs[:1]))).float().T


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


class PerfusionRuntime:
    def __init__(self, text_encoder, tokenizer, inverse_covariance: torch.Tensor, base_fingerprint: str):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.inverse_covariance = inverse_covariance.to(torch.float64).cpu()
        self.base_fingerprint = base_fingerprint
        self.concepts: dict[str, InstalledConcept] = {}
        self.global_lock = False
        self.regional: RegionalCall | None = None  # None: the paper's joint edit
        self._encoding_internally = False
        self.context: CallContext | None = None
        self.registry: deque[EncodedPrompt] = deque(maxlen=REGISTRY_ROWS)
        self.hooks: list = []
        self._span_plans: dict = {}
        self._layer_plans: dict = {}

    # -- concepts and their settings --------------------------------------------------------------
    def add(self, concept: Concept, token_id: int, supercategory_ids: list[int]) -> None:
        self.concepts[concept.token] = InstalledConcept(concept, token_id, supercategory_ids, concept.beta, concept.tau)
        self.invalidate()

    def remove(self, token: str) -> None:
        del self.concepts[token]
        self.invalidate()

    def set_options(self, token: str, beta: float | None = None, tau: float | None = None) -> None:
        installed = self.concepts[token]
        installed.beta = installed.beta if beta is None else float(beta)
        installed.tau = installed.tau if tau is None else float(tau)
        self.invalidate()

    def settings(self) -> RuntimeSettings:
        """Everything a generation call may change, to be put back with ``restore``."""
        gates = {token: (installed.beta, installed.tau) for token, installed in self.concepts.items()}
        return RuntimeSettings(gates, self.global_lock, self.regional)

    def restore(self, settings: RuntimeSettings) -> None:
        for token, (beta, tau) in settings.gates.items():
            if token in self.concepts:
                self.set_options(token, beta=beta, tau=tau)
        self.global_lock, self.regional = settings.global_lock, settings.regional

    def set_concept_encoding(self, token: str, encoding: torch.Tensor) -> None:
        """Training moves i* every step (EMA); every plan built from it is stale then."""
        self.concepts[token].concept.concept_encoding = encoding.detach()
        self.invalidate()

    def invalidate(self) -> None:
        self._span_plans.clear()
        self._layer_plans.clear()

    # -- which rows use which concepts ----------------------------------------------------------
    def remember(self, input_ids: torch.Tensor, encodings: torch.Tensor, alternatives=()) -> None:
        """Text encoder hook body: keep every encoded row that holds a concept token. ``alternatives`` are other
        (B, T, d) hidden states of the same call that a pipeline may condition the UNet on (clip_skip, SDXL)."""
        by_id = {installed.token_id: token for token, installed in self.concepts.items()}
        rows = [tuple(by_id[i] for i in row if i in by_id) for row in input_ids.tolist()]
        wanted = [index for index, tokens in enumerate(rows) if tokens]
        if not wanted:
            return
        key_encodings = self.supercategory_encodings(input_ids[wanted]) if self.global_lock else None
        for position, index in enumerate(wanted):
            tokens = tuple(token for token in self.concepts if token in rows[index])
            keys = None if key_encodings is None else key_encodings[position]
            split = None
            if self.regional is not None and len(tokens) >= self.regional.config.min_concepts:
                split = self.split(input_ids[index], tokens)
            others = tuple(states[index].detach() for states in alternatives if states.shape == encodings.shape)
            self.registry.append(EncodedPrompt(encodings[index].detach(), tokens, keys, split, others))

    @torch.no_grad()
    def split(self, input_ids: torch.Tensor, tokens: tuple[str, ...]) -> SplitRow:
        """Regional composition's rows for one prompt row: the plain row, and each concept's own row."""
        replacements = self.supercategory_replacements()
        token_ids = [self.concepts[token].token_id for token in tokens]
        at = [input_ids.tolist().index(token_id) for token_id in token_ids]
        variants = [replacements] + [{key: ids for key, ids in replacements.items() if key != own} for own in token_ids]
        eos = self.tokenizer.eos_token_id
        substituted = [supercategory_substitution(input_ids[None], variant, eos) for variant in variants]
        ids = torch.cat([new_ids for new_ids, _ in substituted])
        self._encoding_internally = True
        try:
            encodings = encode(self.text_encoder, ids).detach()
            key_encodings = self.locked_keys(ids, encodings) if self.global_lock else [None] * len(tokens)
        finally:
            self._encoding_internally = False
        own_rows = [EncodedPrompt(encodings[1 + n], (token,), key_encodings[n]) for n, token in enumerate(tokens)]
        return SplitRow(
            plain=encodings[0],
            rows=own_rows,
            plain_positions=[int(substituted[0][1][0, position]) for position in at],
            own_positions=[int(substituted[1 + n][1][0, position]) for n, position in enumerate(at)],
        )

    def supercategory_replacements(self) -> dict[int, list[int]]:
        """Each installed concept's token id -> its supercategory word's ids."""
        return {installed.token_id: installed.supercategory_ids for installed in self.concepts.values()}

    def locked_keys(self, ids: torch.Tensor, encodings: torch.Tensor) -> torch.Tensor:
        """Global key locking for split rows (plain first, then each concept's own): each own row with its concept
        replaced too is the plain row, so its key encodings are the plain row's, gathered at the own row's positions."""
        replacements = self.supercategory_replacements()
        super_ids, index = supercategory_substitution(ids[1:], replacements, self.tokenizer.eos_token_id)
        if not torch.equal(super_ids, ids[:1].expand_as(super_ids)):  # an over-long prompt, truncated otherwise
            return self.supercategory_encodings(ids[1:])
        return encodings[0][index.to(encodings.device)]

    @torch.no_grad()
    def supercategory_encodings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Global key locking: encode with each concept token replaced by its supercategory word."""
        replacements = self.supercategory_replacements()
        super_ids, index = supercategory_substitution(input_ids, replacements, self.tokenizer.eos_token_id)
        encodings = encode(self.text_encoder, super_ids)
        return torch.gather(encodings, 1, index.to(encodings.device)[..., None].expand(-1, -1, encodings.shape[-1]))

    def find(self, states: torch.Tensor | None) -> list[EncodedPrompt | None] | None:
        """Each row of ``states`` among the remembered prompts (None where it is not one); None when none is."""
        if states is None or not self.registry or states.ndim != 3:
            return None
        entries = list(self.registry)
        probes = states[..., :PROBE_FEATURES]
        found: list[EncodedPrompt | None] = [None] * states.shape[0]
        for row in range(states.shape[0]):
            for entry in reversed(entries):
                if any(self.same(candidate, states[row], probes[row]) for candidate in (entry.encodings, *entry.alternatives)):
                    found[row] = entry
                    break
        return found if any(entry is not None for entry in found) else None

    @staticmethod
    def same(candidate: torch.Tensor, state: torch.Tensor, probe: torch.Tensor) -> bool:
        """Exact equality, tried on a few features first."""
        candidate = candidate.to(state.device, state.dtype)
        if candidate.shape != state.shape or not torch.equal(candidate[..., :PROBE_FEATURES], probe):
            return False
        return torch.equal(candidate, state.detach())

    def context_for(self, entries: list[EncodedPrompt | None], states: torch.Tensor, regional=None) -> CallContext:
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

    # -- precomputed pieces of the edit ---------------------------------------------------------
    def span_plan(self, tokens: tuple[str, ...], device) -> SpanPlan:
        key = (tokens, str(device))
        if key not in self._span_plans:
            installed = [self.concepts[token] for token in tokens]
            encodings = torch.stack([item.concept.concept_encoding.detach().cpu() for item in installed]).double()
            basis = composition_basis(encodings, self.inverse_covariance)
            self._span_plans[key] = SpanPlan(
                basis=basis,
                basis_readout=(basis @ self.inverse_covariance).T.float().to(device),
                similarity_readouts=similarity_readout(encodings, self.inverse_covariance).float().to(device),
                betas=torch.tensor([item.beta for item in installed], device=device),
                taus=torch.tensor([item.tau for item in installed], device=device),
            )
        return self._span_plans[key]

    @torch.no_grad()
    def layer_plan(self, tokens: tuple[str, ...], layer: str, attn, device) -> LayerPlan:
        key = (tokens, layer, str(device))
        if key not in self._layer_plans:
            span = self.span_plan(tokens, device)
            supercategory = torch.stack([self.concepts[token].concept.supercategory_encoding for token in tokens])
            self._layer_plans[key] = LayerPlan(
                basis_readout=span.basis_readout,
                similarity_readouts=span.similarity_readouts,
                betas=span.betas,
                taus=span.taus,
                key_basis=linear_part(attn.to_k, span.basis),
                value_basis=linear_part(attn.to_v, span.basis),
                key_targets=linear_part(attn.to_k, supercategory),
            )
        return self._layer_plans[key]

    def value_targets(self, tokens: tuple[str, ...], layer: str, device) -> torch.Tensor:
        """o*_V of each concept, (out, N); read live, since training updates them."""
        return torch.stack([self.concepts[token].concept.value_targets[layer].to(device) for token in tokens], -1)

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
        self.registry.clear()

    def _after_text_encoder(self, module, args, kwargs, output):
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is not None and self.concepts and not self._encoding_internally:
            self.remember(input_ids, output[0], other_hidden_states(module, output))

    def _before_unet(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        entries = self.find(states)
        if entries is None:
            self.context = None
            return None
        if self.regional is None or all(entry is None or entry.split is None for entry in entries):
            self.context = self.context_for(entries, states)
            return None
        args, kwargs, entries = self.regional.expand(args, kwargs, entries, states)
        states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        self.context = self.context_for(entries, states, self.regional)
        return args, kwargs

    def _after_unet(self, module, args, output):
        context, self.context = self.context, None
        if context is not None and context.regional is not None:
            return context.regional.merge(output)
        return None
