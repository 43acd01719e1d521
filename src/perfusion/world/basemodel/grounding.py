"""Token grounding for the base model: a loss that puts each grounded caption token's cross-attention on the object
it names (TokenCompose, Wang et al. CVPR 2024, L_token), from the boxes the world's layout gives for free.

The diffusion loss alone taught the UNet to follow position words only slowly: from pure noise it must decide where
the object goes, and the words' share of that MSE is small. Attention decides where a token's value is written
(docs/method.md: keys decide where a word acts), so grounding the object's noun tokens and, for one-object scenes, the
position word ("left", "top", ...) on the object's box teaches that directly, at every noise level.

    grounding = CaptionGrounding(tokenizer)
    targets = grounding.targets(specs, captions, resolutions=(16, 8, 4))
    with recorder.recording(): prediction = unet(...)
    loss = token_grounding_loss(recorder.maps, targets)
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from perfusion.pipeline.attention import install_recording
from perfusion.world.catalog import world_object
from perfusion.world.render import OUTPUT_SIDE, object_placements

# The word of each position phrase that says where (captions.POSITION_PHRASES); one-object captions only.
POSITION_WORDS = frozenset({"left", "right", "top", "bottom", "upper", "lower", "centre", "middle", "centered"})
PAIR_SIDES_STATED = "on the left and"  # "X on the left and Y on the right": each side word belongs to one object
WORD_PATTERN = re.compile(r"[a-z]+|[^\sa-z]+")  # what CLIP's pre-tokenizer splits our lower-case captions into


@dataclass(frozen=True)
class GroundingTargets:
    """Which caption tokens are grounded, and on what: token (sample, index) pairs and each one's box mask per
    attention resolution (side -> (tokens, side * side), the share of each cell the box covers)."""

    samples: torch.Tensor  # (tokens,) long
    indices: torch.Tensor  # (tokens,) long, position in the padded token sequence
    masks: dict[int, torch.Tensor]
    nouns: torch.Tensor | None = None  # (tokens,) bool: the token belongs to a word that names its object
    objects: torch.Tensor | None = None  # (tokens,) long: one number per (sample, object), 0, 1, 2, ... in order

    def __len__(self) -> int:
        return len(self.samples)

    def only_nouns(self) -> GroundingTargets:
        """The targets of the tokens of naming words alone (all of them where no roles were recorded)."""
        if self.nouns is None:
            return self
        keep = self.nouns
        objects = None if self.objects is None else torch.unique(self.objects[keep], return_inverse=True)[1]
        return GroundingTargets(
            self.samples[keep], self.indices[keep], {r: m[keep] for r, m in self.masks.items()}, keep[keep], objects
        )


def attention_resolutions(unet) -> tuple[int, ...]:
    """The side of the latent grid at each UNet level, where its cross-attention maps live (16, 8, 4 here)."""
    return tuple(unet.config.sample_size // 2**level for level in range(len(unet.config.block_out_channels)))


def box_coverage(centre_x: float, centre_y: float, side: float, resolution: int) -> torch.Tensor:
    """(resolution, resolution): the share of each cell covered by the axis-aligned square of `side` pixels around
    the centre (image of OUTPUT_SIDE pixels)."""
    cell = OUTPUT_SIDE / resolution
    edges = torch.arange(resolution, dtype=torch.float32) * cell

    def overlap(centre: float) -> torch.Tensor:
        low, high = centre - side / 2, centre + side / 2
        return ((torch.clamp(edges + cell, max=high) - torch.clamp(edges, min=low)).clamp(min=0)) / cell

    return overlap(centre_y)[:, None] * overlap(centre_x)[None, :]


def object_boxes(spec) -> list[tuple[float, float, float]]:
    """(centre x, centre y, side) of each object of a scene of either world."""
    if hasattr(spec, "placements"):  # the families world
        from perfusion.world.families.scenes import object_boxes as family_boxes

        return family_boxes(spec)
    return [(x, y, side) for _, x, y, side, _, _ in object_placements(spec)]


def word_objects(spec, words: list[str]) -> list[int | None]:
    """For each word of a caption, the index of the object (in spec.objects) it grounds on, or None.

    Object names first ("lovestruck cat" holds the category word "cat"), then category words where only one object
    has that category, then position words: in one-object captions, and in pairs only the "X on the left and Y on the
    right" form (in "X to the left of Y", "left" is about both)."""
    if hasattr(spec, "placements"):  # the families world: attribute words too
        from perfusion.world.families.captions import word_objects as family_word_objects

        return family_word_objects(spec, words)
    owners: list[int | None] = [None] * len(words)
    for index, name in enumerate(spec.objects):
        name_words = name.split()
        for start in range(len(words) - len(name_words) + 1):
            if words[start : start + len(name_words)] == name_words and all(
                o is None for o in owners[start : start + len(name_words)]
            ):
                owners[start : start + len(name_words)] = [index] * len(name_words)
    categories = [world_object(name).category for name in spec.objects]
    for index, category in enumerate(categories):
        if categories.count(category) == 1:
            owners = [index if owner is None and word == category else owner for word, owner in zip(words, owners)]
    if spec.second_object is None:
        return [0 if owner is None and word in POSITION_WORDS else owner for word, owner in zip(words, owners)]
    if PAIR_SIDES_STATED in " ".join(words):
        left_object = 0 if spec.position == "left" else 1
        sides = {"left": left_object, "right": 1 - left_object}
        owners = [sides.get(word) if owner is None else owner for word, owner in zip(words, owners)]
    return owners


def names_object(spec, owner: int, word: str) -> bool:
    """Whether a grounded word names its object (the noun) rather than describing it or saying where it is."""
    if word in POSITION_WORDS:
        return False
    if hasattr(spec, "placements"):  # the families world: its category word and its family's words
        from perfusion.world.families.captions import object_nouns

        return word in object_nouns(spec.instances[owner])
    return True  # the emoji world grounds only the object's name and category words


class CaptionGrounding:
    """Maps captions to grounded token positions for one tokenizer (BOS first; each word's BPE pieces in order)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pieces: dict[str, int] = {}

    def word_token_counts(self, words: list[str]) -> list[int]:
        counts = []
        for word in words:
            if word not in self._pieces:
                self._pieces[word] = len(self.tokenizer.tokenize(word))
            counts.append(self._pieces[word])
        return counts

    def token_objects(self, spec, caption: str) -> list[tuple[int, int]]:
        """(token index, object index) for every grounded token of the caption (truncated at the tokenizer's
        length, after BOS; EOS and padding are never grounded)."""
        return [(token, owner) for token, owner, _ in self.token_roles(spec, caption)]

    def token_roles(self, spec, caption: str) -> list[tuple[int, int, bool]]:
        """(token index, object index, whether its word names the object) for every grounded token."""
        words = WORD_PATTERN.findall(caption.lower())
        owners = word_objects(spec, words)
        limit = self.tokenizer.model_max_length - 1  # the last position holds EOS
        roles, position = [], 1  # position 0 is BOS
        for word, owner, count in zip(words, owners, self.word_token_counts(words)):
            if owner is not None:
                noun = names_object(spec, owner, word)
                roles += [(token, owner, noun) for token in range(position, min(position + count, limit))]
            position += count
        return roles

    def targets(self, specs: list, captions: list[str], resolutions: tuple[int, ...]) -> GroundingTargets:
        samples, indices, nouns, objects, masks = [], [], [], [], {r: [] for r in resolutions}
        groups: dict[tuple[int, int], int] = {}
        for sample, (spec, caption) in enumerate(zip(specs, captions)):
            if not caption:
                continue  # dropped for classifier-free guidance
            placements = object_boxes(spec)
            boxes = {r: [box_coverage(x, y, side, r).flatten() for x, y, side in placements] for r in resolutions}
            for token, owner, noun in self.token_roles(spec, caption):
                samples.append(sample)
                indices.append(token)
                nouns.append(noun)
                objects.append(groups.setdefault((sample, owner), len(groups)))
                for r in resolutions:
                    masks[r].append(boxes[r][owner])
        stacked = {r: torch.stack(m) if m else torch.zeros(0, r * r) for r, m in masks.items()}
        return GroundingTargets(
            torch.tensor(samples, dtype=torch.long),
            torch.tensor(indices, dtype=torch.long),
            stacked,
            torch.tensor(nouns, dtype=torch.bool),
            torch.tensor(objects, dtype=torch.long),
        )


class AttentionRecorder:
    """Records every cross-attention layer's probabilities (mean over heads, (batch, queries, tokens)) in `maps`
    while `recording()`; self-attention keeps its own processors. `remove()` puts the original processors back."""

    def __init__(self, unet):
        self.unet = unet
        self.maps: list[torch.Tensor] = []
        self.active = False
        self.original = install_recording(unet, self._record)

    def _record(self, attention: torch.Tensor) -> None:
        if self.active:
            self.maps.append(attention)

    @contextlib.contextmanager
    def recording(self):
        self.maps, self.active = [], True
        try:
            yield self
        finally:
            self.active = False

    def remove(self) -> None:
        self.unet.set_attn_processor(dict(self.original))


def box_shares(maps: list[torch.Tensor], targets: GroundingTargets) -> list[torch.Tensor]:
    """Per cross-attention layer, (tokens,): the share of each grounded token's attention map that falls on its
    object's box (soft box: each cell counts by the share of it the box covers)."""
    return [
        (attention * mask).sum(1) / attention.sum(1).clamp(min=1e-8) for attention, mask in box_attention(maps, targets)
    ]


def box_attention(maps: list[torch.Tensor], targets: GroundingTargets) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per cross-attention layer: each grounded token's attention (its share of every query's softmax over tokens),
    (tokens, queries), and its box mask."""
    pairs = []
    for layer in maps:
        resolution = int(round(layer.shape[1] ** 0.5))
        samples, indices = targets.samples.to(layer.device), targets.indices.to(layer.device)
        pairs.append((layer[samples, :, indices].float(), targets.masks[resolution].to(layer.device)))
    return pairs


def token_pixel_loss(maps: list[torch.Tensor], targets: GroundingTargets, together: bool = False) -> torch.Tensor:
    """Mean over layers of the binary cross-entropy between each grounded token's attention and its (soft) box
    (TokenCompose's L_pixel): unlike L_token, which shapes a token's map but not its mass, this asks the token to
    hold the attention of the cells its object covers, so that its value, which knows the object and where it is,
    writes the object there. EOS and padding otherwise take most of the attention everywhere.

    ``together``: each object's grounded tokens hold its box's attention together (the BCE of their summed
    attention), so that how it is split among the object's words is left to the diffusion loss."""
    if not len(targets):
        return maps[0].new_zeros(())
    pairs = box_attention(maps, targets)
    if together:
        if targets.objects is None:
            raise ValueError("these grounding targets do not record which object each token belongs to")
        groups = int(targets.objects.max()) + 1
        first = torch.full((groups,), len(targets), dtype=torch.long).scatter_reduce(
            0, targets.objects, torch.arange(len(targets)), "amin"
        )
        pairs = [
            (
                attention.new_zeros(groups, attention.shape[1]).index_add(
                    0, targets.objects.to(attention.device), attention
                ),
                mask[first],
            )
            for attention, mask in pairs
        ]
    losses = [F.binary_cross_entropy(attention.clamp(1e-6, 1 - 1e-6), mask) for attention, mask in pairs]
    return torch.stack(losses).mean()


def token_grounding_loss(maps: list[torch.Tensor], targets: GroundingTargets) -> torch.Tensor:
    """Mean over grounded tokens and cross-attention layers of (1 - the token's share on its box)^2 (TokenCompose's
    L_token, with a soft box)."""
    if not len(targets):
        return maps[0].new_zeros(())
    return torch.stack([(1 - share).pow(2).mean() for share in box_shares(maps, targets)]).mean()
