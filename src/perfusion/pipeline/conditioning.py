"""What a pipeline's UNet is conditioned on, built as the pipeline's own ``encode_prompt`` builds it.

A pipeline has one or more *towers* (a tokenizer and its text encoder). SD 1.x and 2.x have one, read at its last
hidden state; SDXL has two, each read at its penultimate layer, concatenated (768 + 1280 = 2048 wide at base), and the
second tower's projected pooled output enters the UNet's added condition with the size and crop time ids. The edit's
e, C, i* and i*_super live in the concatenated space; each tower has its own v*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perfusion.pipeline.models import UnsupportedPipelineError
from perfusion.pipeline.text import tokenize, word_positions


@dataclass(frozen=True)
class Readout:
    """Which hidden state of a CLIP text encoder's output: the last output (``layer`` None), else
    ``hidden_states[layer]``, through the encoder's final layer norm when ``normed`` (SD's ``clip_skip``)."""

    layer: int | None = None
    normed: bool = False
    pooled: bool = False  # the projected pooled output instead (SDXL's second encoder: its first output, 2-D)

    @property
    def needs_hidden_states(self) -> bool:
        return self.layer is not None

    def __call__(self, text_encoder, output) -> torch.Tensor:
        if self.pooled:
            if output[0].ndim != 2:
                raise ValueError("this text encoder has no pooled projection")
            return output[0]
        if self.layer is None:
            return last_hidden_state(output)
        states = output.hidden_states[self.layer]
        return final_layer_norm(text_encoder)(states) if self.normed else states


def last_hidden_state(output) -> torch.Tensor:
    """CLIPTextModel's first output is the last hidden state; CLIPTextModelWithProjection's is the pooled projection."""
    state = getattr(output, "last_hidden_state", None)
    return state if state is not None else output[0]


def final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def readouts_of(output) -> list[Readout]:
    """Every hidden state an output holds that a pipeline may hand the UNet: each layer as it is (SDXL's
    penultimate, its clip_skip), each after the final layer norm (SD's clip_skip), and the last output."""
    count = len(getattr(output, "hidden_states", None) or ())
    return [Readout()] + [Readout(layer, normed) for normed in (False, True) for layer in range(-1, -count - 1, -1)]


POOLED = Readout(pooled=True)


def pool_at_end_of_text(text_encoder, input_ids: torch.Tensor, output, eos_token_id: int):
    """The encoder's output with every row pooled at its first end-of-text token.

    Under the legacy ``eos_token_id`` 2 that SD 1.5's and SDXL's published configs carry, transformers' CLIP pools at
    ``input_ids.argmax(-1)``: the end-of-text token only while it is the largest id. A concept token is added above
    it, so a concept row would be pooled at the concept token (SDXL's added condition would then see only what
    precedes it). Rows already pooled at their end-of-text token are left bit for bit as they are."""
    if getattr(text_encoder.config, "eos_token_id", None) != 2 or not hasattr(output, "last_hidden_state"):
        return output
    ids = input_ids.to(output.last_hidden_state.device)
    is_end = ids == eos_token_id
    end = is_end.int().argmax(-1)
    wrong = is_end.any(-1) & (ids.argmax(-1) != end)
    if not wrong.any():
        return output
    rows = torch.arange(len(ids), device=ids.device)
    pooled = output.last_hidden_state[rows, end]
    if getattr(output, "text_embeds", None) is not None:  # CLIPTextModelWithProjection (SDXL's second encoder)
        output["text_embeds"] = torch.where(wrong[:, None], text_encoder.text_projection(pooled), output.text_embeds)
    if getattr(output, "pooler_output", None) is not None:  # CLIPTextModel
        output["pooler_output"] = torch.where(wrong[:, None], pooled, output.pooler_output)
    return output


TIME_IDS = 6  # SDXL base's add_time_ids: original size (2), crop top-left (2), target size (2)


def base_time_ids(size: int) -> torch.Tensor:
    """(1, 6): what StableDiffusionXLPipeline._get_add_time_ids gives for a square image of ``size`` pixels, uncropped."""
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)


def time_ids_problem(unet, projection_dim: int) -> str | None:
    """Why the UNet's added condition does not take six time ids beside the pooled embedding (a refiner's takes five),
    or None."""
    layer = getattr(getattr(unet, "add_embedding", None), "linear_1", None)
    width = (unet.config.addition_time_embed_dim or 0) * TIME_IDS + projection_dim
    if layer is None or layer.in_features != width:
        return (
            f"the UNet's added condition is not SDXL base's (six time ids and a {projection_dim}-wide pooled "
            "embedding): training cannot build it"
        )
    return None


@dataclass
class TextTower:
    """One tokenizer and its text encoder, with the hidden state the pipeline reads by default."""

    tokenizer: object
    text_encoder: torch.nn.Module
    readout: Readout
    name: str = "text_encoder"  # the pipeline's attribute: text_encoder, text_encoder_2

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size

    def tokenize(self, prompts: list[str], padding: str = "max_length") -> torch.Tensor:
        return tokenize(self.tokenizer, prompts, padding)

    def word_ids(self, word: str) -> list[int]:
        """A word's token ids, without the start and end tokens."""
        return self.tokenizer(word, add_special_tokens=False).input_ids

    def word_embeddings(self, word: str) -> torch.Tensor:
        """(n, width of the input embeddings): the rows of the word's tokens in this encoder's embedding table."""
        return self.text_encoder.get_input_embeddings().weight[self.word_ids(word)]

    def run(self, ids: torch.Tensor, readout: Readout | None = None):
        """The encoder's output for ``ids`` with the hidden states ``readout`` (default the tower's) needs."""
        readout = readout or self.readout
        kwargs = {"output_hidden_states": True} if readout.needs_hidden_states else {}
        return self.text_encoder(ids.to(self.text_encoder.device), **kwargs)

    def encode(self, ids: torch.Tensor, readout: Readout | None = None) -> torch.Tensor:
        """(B, T, d): the hidden state ``readout`` (default the tower's) of ``ids``."""
        readout = readout or self.readout
        return readout(self.text_encoder, self.run(ids, readout))


class TextConditioning:
    """A pipeline's towers, in the order the UNet's encodings concatenate them, and its added condition (SDXL)."""

    def __init__(self, towers: list[TextTower], time_ids=None, time_ids_problem: str | None = None):
        self.towers = list(towers)
        self.time_ids = time_ids  # size -> (1, 6) add_time_ids, when the last tower's pooled output conditions too
        self.time_ids_problem = time_ids_problem  # why the UNet's added condition cannot be built (training needs it)

    @classmethod
    def of(cls, pipe) -> "TextConditioning":
        if getattr(pipe, "text_encoder_2", None) is None:
            return cls.single(pipe.text_encoder, pipe.tokenizer)
        penultimate = Readout(-2)  # StableDiffusionXLPipeline.encode_prompt: hidden_states[-2] when clip_skip is None
        towers = [
            TextTower(pipe.tokenizer, pipe.text_encoder, penultimate, "text_encoder"),
            TextTower(pipe.tokenizer_2, pipe.text_encoder_2, penultimate, "text_encoder_2"),
        ]
        return cls(towers, base_time_ids, time_ids_problem(pipe.unet, int(pipe.text_encoder_2.config.projection_dim)))

    @classmethod
    def single(cls, text_encoder, tokenizer) -> "TextConditioning":
        """SD 1.x and 2.x: one text encoder, read at its last hidden state."""
        return cls([TextTower(tokenizer, text_encoder, Readout())])

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return sum(tower.width for tower in self.towers)

    @property
    def tokenizer(self):
        """The first tower's tokenizer: token positions are the same in every tower (one CLIP vocabulary)."""
        return self.towers[0].tokenizer

    @property
    def device(self) -> torch.device:
        return self.towers[0].text_encoder.device

    # -- encoding -------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], padding: str = "max_length") -> list[torch.Tensor]:
        """Each tower's ids of ``prompts`` (the same length in every tower)."""
        return [tower.tokenize(prompts, padding) for tower in self.towers]

    def encode(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """e, (B, T, width): every tower's default hidden state, concatenated."""
        return self.encode_with_pooled(ids)[0]

    def encode_with_pooled(self, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """e and, when the UNet takes it (SDXL), the last tower's pooled projection (B, projection)."""
        states, pooled = [], None
        for tower, tower_ids in zip(self.towers, ids):
            output = tower.run(tower_ids)
            states.append(tower.readout(tower.text_encoder, output))
            pooled = output[0] if self.time_ids is not None and output[0].ndim == 2 else pooled
        return torch.cat(states, -1), pooled

    def unet_conditions(self, ids: list[torch.Tensor], size: int, dtype, time_ids: torch.Tensor | None = None) -> dict:
        """The UNet's conditioning arguments for ``ids`` at image side ``size``: ``encoder_hidden_states`` and, on
        SDXL, ``added_cond_kwargs`` (pooled text embedding and time ids, as the pipeline builds them, or the rows'
        own ``time_ids``, (B, 6))."""
        if self.time_ids_problem is not None:
            raise UnsupportedPipelineError(self.time_ids_problem)
        states, pooled = self.encode_with_pooled(ids)
        conditions = {"encoder_hidden_states": states.to(dtype)}
        if self.time_ids is not None:
            if time_ids is None:
                time_ids = self.time_ids(size).repeat(states.shape[0], 1)
            time_ids = time_ids.to(states.device, dtype)
            conditions["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype), "time_ids": time_ids}
        return conditions

    def supercategory_ids(self, word: str) -> list[int]:
        return self.towers[0].word_ids(word)

    @torch.no_grad()
    def mean_word_encoding(self, ids: list[torch.Tensor], word_ids: list[int]) -> torch.Tensor:
        """A word's encoding (on its last token) averaged over the prompts of ``ids``, one occurrence each: the
        i* (and i*_super) of a word over the contexts it is used in."""
        positions = word_positions(ids[0], word_ids, last_only=True)
        return self.encode(ids)[positions.to(self.device)].float().mean(0)
