"""Which concepts act on which prompt rows: the text-encoder and UNet hooks.

Each text encoder's forward hook remembers every encoded row that holds a concept token: the hidden state its pipeline
reads by default (perfusion.pipeline.conditioning), whole, and a probe of every other one the call returned, since a pipeline
may condition the UNet on one of them (``clip_skip``). The UNet's forward pre-hook cuts each row it is given into the
text encoders' widths (SDXL concatenates two) and matches each part against that encoder's remembered rows, so
classifier-free guidance, repeated images and any pipeline's batching are handled without knowing how a pipeline
builds its batch. It leaves the call's ``CallContext`` for the cross-attention processors. What a matched row needs
besides its encodings (the supercategory re-encoding under global key locking, regional composition's split rows) is
built at its first match, from the same hidden state of each text encoder, and kept while the row is remembered.
Under regional composition (perfusion.composition.regions) the pre-hook hands each row with concepts to the regional call, which
splits it and merges it back after the UNet.
"""

from __future__ import annotations

import itertools
import warnings
from collections import deque
from dataclasses import dataclass, field

import torch

from perfusion.composition.regions import RegionalCall, SplitRow, split_row
from perfusion.pipeline.conditioning import POOLED, Readout, TextConditioning, pool_at_end_of_text, readouts_of
from perfusion.pipeline.registry import ConceptRegistry, Gates
from perfusion.pipeline.text import gate_scope, supercategory_substitution

REGISTRY_ROWS = 64  # encoded rows remembered between text encoding and denoising, per text encoder
PROBE_FEATURES = (
    4  # features at each end of a position: compared first, and all that is kept of the other hidden states
)


@dataclass
class EncodedRow:
    """A prompt row holding a concept token, as one text encoder (``tower``) encoded it."""

    serial: int
    tower: int
    input_ids: torch.Tensor  # (T,), on the CPU
    tokens: tuple[str, ...]  # the concepts in it, in loading order
    encodings: torch.Tensor  # (T, d): the tower's default hidden state, detached
    readout: Readout  # which one that is
    others: tuple[Readout, ...] = ()  # the other hidden states the call returned
    probes: torch.Tensor | None = None  # (len(others), T, 2 PROBE_FEATURES): their features at both ends
    reencoded: dict = field(default_factory=dict)  # (readout, ids) -> (T, d): this row with concepts replaced
    call: int = 0  # which text-encoder call it came from
    index: int = 0  # its prompt's place in that call
    gates: Gates | None = None  # per-prompt settings fixed when it was encoded; None: the concepts' own, live


@dataclass
class EncodedPrompt:
    """A UNet row the edit acts on: its encodings (T, D) as the UNet reads them, and what the edit needs besides."""

    encodings: torch.Tensor
    tokens: tuple[str, ...]
    key_encodings: torch.Tensor | None  # the supercategory re-encoding, under global key locking
    split: SplitRow | None = None  # the plain and per-concept rows, under regional composition
    gates: Gates | None = None  # the row's own (beta, tau) of each concept, set per prompt; None: the concepts' own
    scope: torch.Tensor | None = None  # (T, N): 1 where concept n's edit may act; None: everywhere (the paper)


@dataclass
class RowMatch:
    """What each text encoder's part of one UNet row is: a remembered row and the hidden state it was read at, or
    None where no remembered row is that part (SDXL's ``prompt_2`` without the concepts, say)."""

    parts: tuple[tuple[EncodedRow, Readout] | None, ...]
    states: torch.Tensor  # (T, D), the UNet's row

    def holding(self, token: str) -> int:
        """The first text encoder whose part holds ``token``."""
        return next(tower for tower, part in enumerate(self.parts) if part is not None and token in part[0].tokens)


@dataclass
class TowerStack:
    """One text encoder's remembered rows of one length, newest first, with their probes stacked for one comparison."""

    rows: list[EncodedRow]
    probes: torch.Tensor  # (R, T, 2 PROBE_FEATURES): the default hidden states'
    others: list[tuple[EncodedRow, Readout]]
    other_probes: torch.Tensor | None  # (M, T, 2 PROBE_FEATURES)


@dataclass
class CallContext:
    groups: list[tuple[tuple[str, ...], torch.Tensor, Gates | None, torch.Tensor | None]]  # (concept tokens, batch
    # rows using exactly them at the same gates, those gates: None for the concepts' own, each row's gate scope
    # (R, T, N): None where every concept acts everywhere)
    key_encodings: torch.Tensor | None  # (B, T, d) keys' input under global locking
    regional: RegionalCall | None = None  # regional composition's plan for this call
    prepared: dict = field(default_factory=dict)  # what each layer's processor built for these groups, by layer


def probe(states: torch.Tensor) -> torch.Tensor:
    """The first and last PROBE_FEATURES features of every position: (..., T, d) -> (..., T, 2 PROBE_FEATURES)."""
    return torch.cat([states[..., :PROBE_FEATURES], states[..., -PROBE_FEATURES:]], -1)


def hits(probes: torch.Tensor, wanted: torch.Tensor) -> list[int]:
    """The indices of ``probes`` (N, T, f) equal to ``wanted`` (T, f)."""
    return (probes == wanted).flatten(1).all(1).nonzero().flatten().tolist()


class PromptRouter:
    def __init__(self, registry: ConceptRegistry, text: TextConditioning, on_prompt=None):
        self._registry, self.text = registry, text
        self.on_prompt = on_prompt  # called when a prompt with a concept is encoded (a new generation call)
        self.remembered: list[deque[EncodedRow]] = [deque(maxlen=REGISTRY_ROWS) for _ in text.towers]
        self.built: dict[tuple, EncodedPrompt] = {}  # what was built for a matched row, by its key()
        self.stacks: dict[tuple, TowerStack | None] = {}  # by (tower, length, device, dtype); emptied on remember
        self.serials = itertools.count()
        self.calls = itertools.count()
        self.context: CallContext | None = None
        self.hooks: list = []
        self.before_call = None  # called with the UNet at each of its calls (the loader keeps its processors there)
        self.last_context: tuple | None = None  # (entries, states, context) of the last joint call: the next step's
        self._encoding_internally = False

    # -- remembering encoded rows ---------------------------------------------------------------
    def remember(self, tower: int, input_ids: torch.Tensor, output) -> None:
        """Keep every row of a text encoder's call that holds a concept token; under global key locking or regional
        composition, encode its replaced variants now (the encoder as the pipeline set it up: on its device, at its
        LoRA scale) for the default hidden state."""
        by_id = self._registry.tokens_by_id(tower)
        rows = [tuple(by_id[i] for i in row if i in by_id) for row in input_ids.tolist()]
        wanted = [index for index, tokens in enumerate(rows) if tokens]
        if not wanted:
            return
        if self.on_prompt is not None:
            self.on_prompt()
        encoder = self.text.towers[tower].text_encoder
        available = readouts_of(output)
        readout = self.text.towers[tower].readout
        readout = readout if readout in available else Readout()  # called without the hidden states it reads
        others = tuple(item for item in available if item != readout)
        with torch.no_grad():
            encodings = readout(encoder, output).detach()
            probes = torch.stack([probe(item(encoder, output)) for item in others], 1) if others else None
        if len(wanted) > self.remembered[tower].maxlen:  # one call with more rows than kept: keep all of this call's
            self.remembered[tower] = deque(self.remembered[tower], maxlen=len(wanted))
        call = next(self.calls)
        for index in wanted:
            tokens = tuple(token for token in self._registry.concepts if token in rows[index])
            gates = self._registry.row_gates(index, len(rows), tokens)
            row = EncodedRow(
                next(self.serials),
                tower,
                input_ids[index].detach().cpu(),
                tokens,
                encodings[index],
                readout,
                others,
                None if probes is None else probes[index],
                call=call,
                index=index,
                gates=gates,
            )
            self.remembered[tower].append(row)
            self.encode_variants(row)
        self.stacks.clear()
        live = {row.serial for rows_ in self.remembered for row in rows_}
        self.built = {key: entry for key, entry in self.built.items() if all(serial in live for serial in key[0])}

    def encode_variants(self, row: EncodedRow) -> None:
        """The replaced rows the settings will ask for (perfusion.composition.regions for the split ones), encoded ahead."""
        registry, regional, split = self._registry, self._registry.regional, set()
        if regional is not None and len(row.tokens) >= regional.config.min_concepts:
            split = {(), *((token,) for token in row.tokens)}
        keeps = split | {()} if registry.global_lock else split
        ids = {keep: self.substitute_row(row.tower, row.input_ids[None], keep)[0] for keep in sorted(keeps)}
        variants = list(ids.values())
        if registry.global_lock and regional is not None:  # the split rows' own keys
            variants += [self.substitute_row(row.tower, variant, ())[0] for variant in variants]
        if variants:
            self.tower_encodings(row, row.readout, torch.cat(variants))
        if split and self.pools(row.tower):  # the split rows' pooled embeddings (SDXL)
            self.tower_encodings(row, POOLED, torch.cat([ids[keep] for keep in sorted(split)]))

    def pools(self, tower: int) -> bool:
        """Whether this text encoder's pooled projection enters the UNet's added condition (SDXL's last)."""
        return self.text.time_ids is not None and tower == len(self.text.towers) - 1

    def pooled_variants(self, match: RowMatch, ids: list[torch.Tensor | None]) -> torch.Tensor | None:
        """(V, P): the pooled embedding of each variant of the matched row; None when the UNet takes none, or when
        the pooling encoder's part was not matched (its prompt holds no concept: the row's own pooled stays)."""
        tower = len(self.text.towers) - 1
        if not self.pools(tower) or match.parts[tower] is None:
            return None
        return self.tower_encodings(match.parts[tower][0], POOLED, ids[tower])

    def encode_quietly(self, tower: int, ids: torch.Tensor, readout: Readout) -> torch.Tensor:
        """One text encoder's hidden state ``readout`` of ``ids``, not remembered (the router's own encodings)."""
        self._encoding_internally = True
        try:
            with torch.no_grad():
                return self.text.towers[tower].encode(ids, readout).detach()
        finally:
            self._encoding_internally = False

    def tower_encodings(self, row: EncodedRow, readout: Readout, ids: torch.Tensor) -> torch.Tensor:
        """(V, T, d): ``ids`` (variants of ``row``) encoded by its text encoder at ``readout``, each once."""
        keys = [(readout, tuple(variant.tolist())) for variant in ids]
        missing: dict = {}  # each new variant once
        for index, key in enumerate(keys):
            if key not in row.reencoded:
                missing.setdefault(key, index)
        if missing:
            encoded = self.encode_quietly(row.tower, ids[list(missing.values())], readout)
            row.reencoded.update(zip(missing, encoded))
        return torch.stack([row.reencoded[key] for key in keys])

    # -- what regional composition reads (perfusion.composition.regions.RowEncoder) ----------------
    @property
    def global_lock(self) -> bool:
        return self._registry.global_lock

    def token_position(self, match: RowMatch, token: str) -> tuple[int, int]:
        """The text encoder that first holds ``token`` in the matched row, and the token's position in its ids."""
        tower = match.holding(token)
        return tower, match.parts[tower][0].input_ids.tolist().index(self._registry.token_id(token, tower))

    def own_row(self, encodings, tokens: tuple[str, ...], key_encodings, gates: Gates | None, ids) -> EncodedPrompt:
        """One concept's own row of a split (``ids``: its ids in each text encoder, None where unmatched), as the
        edit reads any row."""
        return EncodedPrompt(encodings, tokens, key_encodings, gates=gates, scope=self.scope_of(ids, tokens))

    def scope_of(self, ids: list[torch.Tensor | None], tokens: tuple[str, ...]) -> torch.Tensor | None:
        """(T, N): where each concept's edit may act in a row whose ids in each text encoder are ``ids`` (T,): its
        gate scope (perfusion.pipeline.text.gate_scope) in every matched encoder; None when every concept's is "all"
        (the paper's edit)."""
        installed = [self._registry[token] for token in tokens]
        if all(concept.scope == "all" for concept in installed):
            return None
        length = next(row.shape[-1] for row in ids if row is not None)
        columns = []
        for concept in installed:
            allowed = torch.ones(length, dtype=torch.bool)
            for tower, row in enumerate(ids):
                if row is not None:
                    eos = self.text.towers[tower].tokenizer.eos_token_id
                    allowed &= gate_scope(row.cpu(), eos, concept.supercategory_ids[tower], concept.scope)
            columns.append(allowed)
        return torch.stack(columns, -1).float()

    # -- re-encoding a matched row with concepts replaced -----------------------------------------
    def substitute_row(self, tower: int, ids: torch.Tensor, keep: tuple[str, ...] = ()):
        """``ids`` (V, T) of one text encoder with every concept token but those in ``keep`` replaced by its
        supercategory word, and the index of each original position in them (V, T)."""
        by_id = self._registry.tokens_by_id(tower)
        replacements = {
            key: value
            for key, value in self._registry.supercategory_replacements(tower).items()
            if by_id[key] not in keep
        }
        return supercategory_substitution(ids, replacements, self.text.towers[tower].tokenizer.eos_token_id)

    def substitute(self, match: RowMatch, keep: tuple[str, ...] = (), rows=None):
        """Each text encoder's ids of the matched row (or ``rows``: per encoder, (V, T)) with every concept token but
        those in ``keep`` replaced, and each one's index of the original positions (both None for an unmatched
        part)."""
        new_ids, indexes = [], []
        for tower, part in enumerate(match.parts):
            if part is None:
                new_ids.append(None)
                indexes.append(None)
                continue
            ids, index = self.substitute_row(tower, part[0].input_ids[None] if rows is None else rows[tower], keep)
            new_ids.append(ids)
            indexes.append(index)
        return new_ids, indexes

    def encode_rows(self, match: RowMatch, ids: list[torch.Tensor | None]) -> torch.Tensor:
        """(V, T, D): ``ids`` encoded as the UNet's row was (each part at its matched hidden state, concatenated); an
        unmatched part is the row's own."""
        count = next(item.shape[0] for item in ids if item is not None)
        parts, start = [], 0
        for tower, (part, tower_ids) in enumerate(zip(match.parts, ids)):
            width = self.text.towers[tower].width
            if part is None:
                parts.append(match.states[:, start : start + width].detach().expand(count, -1, -1))
            else:
                encoded = self.tower_encodings(part[0], part[1], tower_ids)
                parts.append(encoded.to(match.states.device, match.states.dtype))
            start += width
        return torch.cat(parts, -1)

    def gather(self, match: RowMatch, encodings: torch.Tensor, indexes: list[torch.Tensor | None]) -> torch.Tensor:
        """Each matched part's encodings (V, T, D) at its ``indexes`` (V, T); an unmatched part's kept where it is."""
        parts, start = [], 0
        for tower, index in enumerate(indexes):
            width = self.text.towers[tower].width
            piece = encodings[..., start : start + width]
            if index is not None:
                piece = torch.gather(piece, 1, index.to(piece.device)[..., None].expand(-1, -1, width))
            parts.append(piece)
            start += width
        return torch.cat(parts, -1)

    def supercategory_encodings(self, match: RowMatch) -> torch.Tensor:
        """Global key locking: the row with each concept token replaced by its supercategory word, encoded, at the
        original positions (T, D)."""
        ids, indexes = self.substitute(match)
        return self.gather(match, self.encode_rows(match, ids), indexes)[0]

    # -- matching the UNet's rows -----------------------------------------------------------------
    def stack(self, tower: int, length: int, device, dtype) -> TowerStack | None:
        key = (tower, length, str(device), dtype)
        if key not in self.stacks:
            rows = [row for row in reversed(self.remembered[tower]) if row.encodings.shape[0] == length]
            others = [(row, readout) for row in rows for readout in row.others]
            other_probes = [row.probes for row in rows if row.probes is not None]
            self.stacks[key] = (
                None
                if not rows
                else TowerStack(
                    rows,
                    torch.stack([probe(row.encodings) for row in rows]).to(device, dtype),
                    others,
                    torch.cat(other_probes).to(device, dtype) if other_probes else None,
                )
            )
        return self.stacks[key]

    def identify(self, tower: int, part: torch.Tensor) -> tuple[EncodedRow, Readout] | None:
        """Which remembered row of a text encoder (and which of its hidden states) ``part`` (T, d) is, newest first:
        the default hidden state by exact equality, another by its probe."""
        stack = self.stack(tower, part.shape[0], part.device, part.dtype)
        if stack is None:
            return None
        part_probe = probe(part)
        for index in hits(stack.probes, part_probe):
            row = stack.rows[index]
            if torch.equal(row.encodings.to(part.device, part.dtype), part):
                return row, row.readout
        if stack.other_probes is not None:
            found = hits(stack.other_probes, part_probe)
            if found:
                return stack.others[found[0]]
        return None

    def match(self, states: torch.Tensor) -> RowMatch | None:
        """One UNet row (T, D) among the remembered rows, part by part; None when no part is one."""
        parts, start = [], 0
        for tower, encoder in enumerate(self.text.towers):
            parts.append(self.identify(tower, states[:, start : start + encoder.width]))
            start += encoder.width
        return RowMatch(tuple(parts), states) if any(part is not None for part in parts) else None

    def entry(self, match: RowMatch) -> EncodedPrompt:
        """What the edit needs for a matched row, built under the registry's settings (and kept for the next call)."""
        registry = self._registry
        regional = registry.regional
        unmatched, start = [], 0
        for tower, part in enumerate(match.parts):
            width = self.text.towers[tower].width
            if part is None:  # the row's own values enter what is built: keyed by their probe
                unmatched.append(probe(match.states[:, start : start + width]).float().cpu().numpy().tobytes())
            start += width
        key = (
            tuple(part[0].serial for part in match.parts if part is not None),
            tuple(None if part is None else part[1] for part in match.parts),
            tuple(unmatched),
            tuple(registry.concepts),
            registry.global_lock,
            None if regional is None else regional.config.min_concepts,
        )
        if key in self.built:
            return self.built[key]
        found = set().union(*(part[0].tokens for part in match.parts if part is not None))
        tokens = tuple(token for token in registry.concepts if token in found)
        held = [set() if part is None else set(part[0].tokens) for part in match.parts]
        partial = [token for token in tokens if not all(token in tower_tokens for tower_tokens in held)]
        if partial:
            warnings.warn(
                f"{', '.join(partial)}: in the prompt of one text encoder only (prompt_2 without it?); the "
                "gate reads every encoder's part of e, so the concept may show weakly",
                UserWarning,
                stacklevel=2,
            )
        gates = next((part[0].gates for part in match.parts if part is not None and part[0].gates), None)
        if tokens and any(
            part is not None and part[1] != tower.readout for part, tower in zip(match.parts, self.text.towers)
        ):
            warnings.warn(
                f"{', '.join(tokens)}: the UNet is given another hidden state of the text encoder than the one "
                "the concept's i* and C were made at (clip_skip?), so the gate may be off",
                UserWarning,
                stacklevel=2,
            )
        keys = self.supercategory_encodings(match) if registry.global_lock else None
        split = None
        if regional is not None and len(tokens) >= regional.config.min_concepts:
            split = split_row(self, match, tokens, gates)
        scope = self.scope_of([None if part is None else part[0].input_ids for part in match.parts], tokens)
        self.built[key] = entry = EncodedPrompt(match.states.detach(), tokens, keys, split, gates, scope)
        return entry

    def find(self, states: torch.Tensor | None) -> list[EncodedPrompt | None] | None:
        """Each row of ``states`` among the remembered prompts (None where it is not one); None when none is."""
        if states is None or states.ndim != 3 or states.shape[-1] != self.text.width or not any(self.remembered):
            return None
        matches = [self.match(states[row]) for row in range(states.shape[0])]
        if all(match is None for match in matches):
            return None
        self.spread_over_twins(matches)
        return [None if match is None else self.entry(match) for match in matches]

    def spread_over_twins(self, matches: list[RowMatch | None]) -> None:
        """Prompts of one call that are the same text encode to the same rows, which the UNet's rows cannot tell
        apart; under per-prompt settings they may still differ in their gates. The UNet rows that matched such a row
        are given out to its twins in order, in equal runs (a pipeline repeats each prompt's images side by side:
        ``prompt_embeds.repeat(1, n, 1).view(B * n, ...)``)."""
        groups: dict[tuple, list[int]] = {}
        for row, match in enumerate(matches):
            if match is not None and any(part is not None and part[0].gates is not None for part in match.parts):
                groups.setdefault(tuple(None if part is None else part[0].serial for part in match.parts), []).append(
                    row
                )
        for rows in groups.values():
            parts = list(matches[rows[0]].parts)
            twins = [None if part is None else {twin.index: twin for twin in self.twins(part[0])} for part in parts]
            # prompts are twins only where every text encoder's row is (SDXL's prompt_2 may tell them apart)
            shared = sorted(set.intersection(*(set(found) for found in twins if found is not None)))
            if not shared:
                continue
            for order, row in enumerate(rows):
                index = shared[order * len(shared) // len(rows)]
                matches[row] = RowMatch(
                    tuple(part if found is None else (found[index], part[1]) for part, found in zip(parts, twins)),
                    matches[row].states,
                )

    def twins(self, row: EncodedRow) -> list[EncodedRow]:
        """The rows of ``row``'s text-encoder call with the same ids (itself among them), in prompt order."""
        found = [
            other
            for other in self.remembered[row.tower]
            if other.call == row.call and torch.equal(other.input_ids, row.input_ids)
        ]
        return sorted(found, key=lambda other: other.index)

    def joint_context(self, entries: list[EncodedPrompt | None], states: torch.Tensor) -> CallContext:
        """The call's context, the last one again when the rows are the same (every denoising step of one pipeline
        call): what the processors prepared for it is kept with it."""
        last = self.last_context
        if (
            last is not None
            and last[1] is states
            and len(last[0]) == len(entries)
            and all(a is b for a, b in zip(last[0], entries))
        ):
            return last[2]
        context = self.context_for(entries, states)
        self.last_context = (entries, states, context)
        return context

    @staticmethod
    def context_for(entries: list[EncodedPrompt | None], states: torch.Tensor, regional=None) -> CallContext:
        groups: dict[tuple, list[int]] = {}
        for row, entry in enumerate(entries):
            if entry is not None:
                groups.setdefault((entry.tokens, entry.gates), []).append(row)
        key_encodings = None
        if any(entry is not None and entry.key_encodings is not None for entry in entries):
            key_encodings = torch.stack(
                [
                    states[row]
                    if entry is None or entry.key_encodings is None
                    else entry.key_encodings.to(states.device, states.dtype)
                    for row, entry in enumerate(entries)
                ]
            )
        rows = []
        for (tokens, gates), indices in groups.items():
            # the same concepts, so the same scopes' presence (scope_of: None where every one's is "all")
            scopes = [entries[row].scope for row in indices]
            stacked = None if scopes[0] is None else torch.stack(scopes).to(states.device)
            rows.append((tokens, torch.tensor(indices, device=states.device), gates, stacked))
        return CallContext(rows, key_encodings, regional)

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, unet) -> None:
        self.hooks = [
            tower.text_encoder.register_forward_hook(self._after_text_encoder(index), with_kwargs=True)
            for index, tower in enumerate(self.text.towers)
        ]
        self.hooks += [
            unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
            unet.register_forward_hook(self._after_unet),
        ]

    def forget(self) -> None:
        """Drop every remembered row and what was built for it."""
        for rows in self.remembered:
            rows.clear()
        self.built.clear()
        self.stacks.clear()
        self.last_context = None

    def detach(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self.context = None
        self.forget()

    def _after_text_encoder(self, tower: int):
        eos_token_id = self.text.towers[tower].tokenizer.eos_token_id

        def hook(module, args, kwargs, output):
            input_ids = args[0] if args else kwargs.get("input_ids")
            if input_ids is None:
                return output
            output = pool_at_end_of_text(module, input_ids, output, eos_token_id)  # concept rows, in training too
            if self._registry.concepts and not self._encoding_internally:
                self.remember(tower, input_ids, output)
            return output

        return hook

    @torch.compiler.disable  # matching rows is Python bookkeeping: a compiled UNet calls it as is, never traces it
    def _before_unet(self, module, args, kwargs):
        if self.before_call is not None:
            self.before_call(module)
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        entries = self.find(states)
        regional = self._registry.regional
        if entries is None:
            self.context = None
            return None
        if regional is None or all(entry is None or entry.split is None for entry in entries):
            self.context = self.joint_context(entries, states)
            return None
        args, kwargs, entries = regional.expand(args, kwargs, entries, states)
        states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        self.context = self.context_for(entries, states, regional)
        return args, kwargs

    @torch.compiler.disable
    def _after_unet(self, module, args, output):
        context, self.context = self.context, None
        if context is not None and context.regional is not None:
            return context.regional.merge(output)
        return None
