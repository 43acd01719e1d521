"""Regional composition: with concepts in a prompt, each concept is denoised only in its own region of the image.

The paper's joint edit lets a concept take over its neighbour on a small base model (docs/history.md, "Two concepts
in one prompt"). Here every prompt row that holds concepts is split, inside the UNet call, into the *plain* row (each concept token replaced
by its supercategory word) and one row per concept (its own token kept, the others replaced). While the noise is
high (the layout part of the schedule) only the plain row is denoised, and its cross-attention to each concept's
word is summed per image. After it, inside each concept's region (its summed map, smoothed, above ``threshold`` of
its peak and the highest of the concepts' there) the prediction is that concept's row's, elsewhere the plain row's;
each concept row's attention to its own token keeps adding to its map. So no concept's edit acts on another's
region, whatever the UNet's convolutions and self-attention carry across the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from perfusion.pipeline.attention import batch_indexed, on_latent_grid

MODES = ("joint", "regions")


class RowEncoder(Protocol):
    """All that regional composition asks of the prompt router (perfusion.pipeline.router.PromptRouter): re-encode a
    matched UNet row (a RowMatch) with concepts replaced, and build a concept's own row as the edit reads rows."""

    global_lock: bool  # whether keys are locked to the supercategory for every row

    def substitute(self, match, keep: tuple[str, ...] = (), rows=None) -> tuple[list, list]: ...

    def encode_rows(self, match, ids: list) -> torch.Tensor: ...

    def gather(self, match, encodings: torch.Tensor, indexes: list) -> torch.Tensor: ...

    def pooled_variants(self, match, ids: list) -> torch.Tensor | None: ...

    def token_position(self, match, token: str) -> tuple[int, int]: ...

    def own_row(self, encodings: torch.Tensor, tokens: tuple[str, ...], key_encodings, gates, ids: list): ...


@dataclass
class RegionsConfig:
    layout: float = 0.48  # share of the noise schedule, from pure noise, denoised with the plain row alone
    threshold: float = 0.3  # a cell joins a concept's region above this share of its map's peak
    min_concepts: int = 2  # prompts with fewer concepts keep the joint edit
    num_train_timesteps: int = 1000  # the scheduler's, to place ``layout`` on the timestep axis

    def __post_init__(self):
        if not 0.0 <= self.layout <= 1.0:
            raise ValueError(f"layout must be in [0, 1], got {self.layout}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.min_concepts < 1:
            raise ValueError(f"min_concepts must be at least 1, got {self.min_concepts}")


@dataclass
class SplitRow:
    """One prompt row with concepts, as regional composition denoises it."""

    plain: torch.Tensor  # (T, d): every concept token replaced by its supercategory
    rows: list  # EncodedPrompt of each concept's own row, in the order of ``plain_positions``
    plain_positions: list[int]  # each concept's word in the plain row (its supercategory's last token)
    own_positions: list[int]  # each concept's token in its own row
    pooled: torch.Tensor | None = None  # (1 + n, P): SDXL's pooled embedding of the plain row, then each own row's


@dataclass
class Recording:
    row: int  # batch row whose cross-attention is read
    position: int  # token position read
    owner: int  # the original batch row whose map it adds to
    channel: int  # which concept of that row


@dataclass
class Expansion:
    row: int  # the original batch row (now the plain row)
    extra: list[int]  # batch rows of its concepts' own rows (none during the layout part)


def region_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(n, h, w) summed maps -> {0, 1} masks: m_j = [j = argmax_i a_i and a_j > threshold], a = smoothed map / peak."""
    smooth = F.avg_pool2d(maps[None].float(), 3, stride=1, padding=1, count_include_pad=False)[0]
    share = smooth / smooth.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]
    winner = F.one_hot(share.argmax(0), share.shape[0]).permute(2, 0, 1).bool()  # ties go to the first concept
    return (winner & (share > threshold)).to(maps.dtype)


def attention_to(query: torch.Tensor, key: torch.Tensor, scale: float, position: int) -> torch.Tensor:
    """softmax(q k^T * scale) at one token position, averaged over heads: (heads, N, d), (heads, T, d) -> (N,)."""
    return torch.softmax((query @ key.transpose(-1, -2)).float() * scale, dim=-1)[..., position].mean(0)


@dataclass
class RegionalCall:
    """The state of one denoising trajectory: each split row's summed attention maps, and this call's plan."""

    config: RegionsConfig
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # original row -> (n, h, w)
    last_timestep: float | None = None
    batch_size: int = 0
    expansions: list[Expansion] = field(default_factory=list)
    recordings: list[Recording] = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)

    def expand(self, args: tuple, kwargs: dict, entries: list, states: torch.Tensor):
        """Rebuild the UNet call: split rows read the plain row; after the layout part their concept rows are
        appended. Returns the new args, kwargs and the entry of every new row (None: no concept)."""
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        now = float(torch.as_tensor(timestep).flatten()[0])
        if self.last_timestep is None or now > self.last_timestep or sample.shape[0] != self.batch_size:
            self.maps.clear()  # a new trajectory
        self.last_timestep, self.batch_size, self.grid = now, sample.shape[0], tuple(sample.shape[-2:])
        layout = now >= (1.0 - self.config.layout) * self.config.num_train_timesteps
        states = states.clone()
        index, extra_states, new_entries = list(range(sample.shape[0])), [], list(entries)
        pooled = []  # (batch row, its pooled embedding) where a split row brings its own (SDXL)
        self.expansions, self.recordings = [], []
        for row, entry in enumerate(entries):
            split = getattr(entry, "split", None)
            if split is None:
                continue
            states[row] = split.plain.to(states.device, states.dtype)
            if row not in self.maps:
                self.maps[row] = torch.zeros(len(split.rows), *self.grid, device=sample.device)
            new_entries[row] = None
            extra = []
            if split.pooled is not None:
                pooled.append((row, split.pooled[0]))
            for channel, own in enumerate(split.rows):
                if layout:
                    self.recordings.append(Recording(row, split.plain_positions[channel], row, channel))
                    continue
                if split.pooled is not None:
                    pooled.append((len(index), split.pooled[1 + channel]))
                extra.append(len(index))
                self.recordings.append(Recording(len(index), split.own_positions[channel], row, channel))
                index.append(row)
                extra_states.append(own.encodings.to(states.device, states.dtype))
                new_entries.append(own)
            self.expansions.append(Expansion(row, extra))
        rows = torch.tensor(index)
        args = tuple(batch_indexed(value, sample.shape[0], rows) for value in args)
        kwargs = {name: batch_indexed(value, sample.shape[0], rows) for name, value in kwargs.items()}
        kwargs["encoder_hidden_states"] = torch.cat([states, *[item[None] for item in extra_states]])
        if pooled and "text_embeds" in (kwargs.get("added_cond_kwargs") or {}):
            embeds = kwargs["added_cond_kwargs"]["text_embeds"].clone()
            for row, vector in pooled:
                embeds[row] = vector.to(embeds.device, embeds.dtype)
            kwargs["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], "text_embeds": embeds}
        if len(args) > 2:  # encoder_hidden_states given by position
            args = args[:2] + (kwargs.pop("encoder_hidden_states"),) + args[3:]
        return args, kwargs, new_entries

    def record(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Processor hook: add this layer's attention of each recorded row to its owner's map (on the latent grid);
        ``query`` (B, heads, N, d), ``key`` (B, heads, T, d)."""
        for item in self.recordings:
            attention = attention_to(query[item.row], key[item.row], scale, item.position)
            layer_map = on_latent_grid(attention[None], *self.grid)[0, 0]
            self.maps[item.owner][item.channel] += layer_map.to(self.maps[item.owner].device)

    def merge(self, output):
        """UNet forward-hook body: each split row's prediction from its regions; back to the caller's batch size."""
        sample = output[0] if isinstance(output, tuple) else output.sample
        merged = sample[: self.batch_size].clone()
        for expansion in self.expansions:
            if not expansion.extra:
                continue
            masks = region_masks(self.maps[expansion.row], self.config.threshold).to(sample.dtype)[:, None]
            parts = sample[expansion.extra]  # (n, C, h, w)
            merged[expansion.row] = (1 - masks.sum(0)) * sample[expansion.row] + (masks * parts).sum(0)
        if isinstance(output, tuple):
            return (merged, *output[1:])
        output.sample = merged
        return output


@torch.no_grad()
def split_row(router: RowEncoder, match, tokens: tuple[str, ...], gates=None) -> SplitRow:
    """Regional composition's rows for one matched UNet row: the plain row, and each concept's own row.

    ``router`` re-encodes ``match`` (a RowMatch) with concepts replaced, each text encoder at the hidden state the row
    was read at, and builds each concept's own row; ``gates`` are the row's own (set per prompt), handed to each
    concept's own row. A concept's position is its token's in
    the first text encoder's part that holds it.
    """
    variants = [router.substitute(match, keep) for keep in [(), *((token,) for token in tokens)]]
    ids = [
        None if part is None else torch.cat([new_ids[tower] for new_ids, _ in variants])
        for tower, part in enumerate(match.parts)
    ]
    encodings = router.encode_rows(match, ids)  # plain first, then each concept's own
    key_encodings = locked_keys(router, match, ids, encodings) if router.global_lock else [None] * len(tokens)
    own_rows = [
        router.own_row(
            encodings[1 + n],
            (token,),
            key_encodings[n],
            gates=None if gates is None else tuple(gate for gate in gates if gate[0] == token),
            ids=[None if tower_ids is None else tower_ids[1 + n] for tower_ids in ids],
        )
        for n, token in enumerate(tokens)
    ]
    positions = []  # (plain, own) of each concept
    for n, token in enumerate(tokens):
        tower, at = router.token_position(match, token)
        positions.append((int(variants[0][1][tower][0, at]), int(variants[1 + n][1][tower][0, at])))
    return SplitRow(
        plain=encodings[0],
        rows=own_rows,
        plain_positions=[plain for plain, _ in positions],
        own_positions=[own for _, own in positions],
        pooled=router.pooled_variants(match, ids),
    )


def locked_keys(router: RowEncoder, match, ids: list, encodings: torch.Tensor) -> torch.Tensor:
    """Global key locking for split rows (plain first, then each concept's own): each own row with its concept
    replaced too is the plain row, so its key encodings are the plain row's, gathered at the own row's positions."""
    own = [None if tower_ids is None else tower_ids[1:] for tower_ids in ids]
    super_ids, indexes = router.substitute(match, (), rows=own)
    count = next(len(item) for item in ids if item is not None) - 1
    if all(new is None or torch.equal(new, old[:1].expand_as(new)) for new, old in zip(super_ids, ids)):
        return router.gather(match, encodings[:1].expand(count, -1, -1), indexes)
    return router.gather(
        match, router.encode_rows(match, super_ids), indexes
    )  # an over-long prompt, truncated otherwise
