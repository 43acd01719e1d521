"""The concept file: what one trained concept is, and its safetensors format.

A file holds v* (the token's input embedding; on SDXL one per text encoder, ``token_embedding_2`` the second's), i*
(its encoding), i*_super (the supercategory's encoding, from which the key targets o*_K = W_K i*_super are recomputed
exactly at load time) and one value target o*_V per cross-attention layer, plus metadata. Nothing per token position,
no C^-1.

A file may come from anywhere: ``Concept.load`` refuses, with one ConceptFileError line that names the file, whatever
would load and then draw non-finite images or crash a generation (the bounds are the constants below);
perfusion.pipeline.loader checks the widths against the pipeline before installing anything.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open

from perfusion.files import atomic_save_safetensors
from perfusion.pipeline.text import CONCEPT_TOKEN_PATTERN

FORMAT = "perfusion-concept"
FORMAT_VERSION = 1
DEFAULT_BETA = 0.7
DEFAULT_TAU = 0.15
VALUE_PREFIX = "value_targets."
ENCODING_NAMES = ("token_embedding", "concept_encoding", "supercategory_encoding")
MAX_TEXT_ENCODERS = 2  # SDXL's two; a file names v* of text encoder n (from 0) token_embedding, token_embedding_2, ...


GATE_SCOPES = ("except-word", "prompt", "all")  # where the edit acts (perfusion.pipeline.text.gate_scope); "all": the
# paper's, every position


def embedding_name(tower: int) -> str:
    """The file's name for v* of text encoder ``tower`` (0: the first)."""
    return "token_embedding" if tower == 0 else f"token_embedding_{tower + 1}"


EMBEDDING_NAMES = tuple(embedding_name(tower) for tower in range(MAX_TEXT_ENCODERS))
REQUIRED_METADATA = ("token", "supercategory", "base_fingerprint", "beta", "tau")

# What a concept file may hold; anything else is refused at load time (ConceptFileError), since it would load and
# then draw NaN images or crash a generation:
MAX_MAGNITUDE = 1e4  # every stored value: real ones are O(10) (CLIP embeddings, encodings, W_V outputs)
MIN_ENCODING_NORM = 1e-3  # |i*| and |i*_super|: the gate reads C^-1 i* / (i*^T C^-1 i*), ~1/|i*|
MAX_WIDTH = 1 << 16  # values in one vector: above any model's width, and a header's shapes are read before its tensors
MAX_TOKEN_LENGTH = 64  # characters of the <token>
MAX_SUPERCATEGORY_LENGTH = 200  # characters: a word or a short phrase ("large red mug")
BETA_RANGE = (0.0, 1.0)  # s(i*) = 1, s(unrelated) ~ 0: a threshold outside [0, 1] opens or closes every gate
TAU_RANGE = (0.0, 1.0)  # exclusive below: a temperature
MIN_TAU = float(
    torch.finfo(torch.float32).tiny
)  # the smallest normal float32: the gate computes (s - beta) / tau in it
VERSION_PATTERN = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit takes "²", which int() refuses


class ConceptFileError(ValueError):
    """A concept file that is missing, corrupt, of another format, made for another base model, or holding values that
    would not generate (NaN, inf, beyond MAX_MAGNITUDE, a zero i*, a gate outside its range, wrong shapes)."""


@dataclass
class Concept:
    token: str
    supercategory: str
    token_embeddings: list[torch.Tensor]  # v* of each text encoder, in the pipeline's order (SDXL has two)
    concept_encoding: torch.Tensor  # i*
    supercategory_encoding: torch.Tensor  # i*_super, the key lock
    value_targets: dict[str, torch.Tensor]  # o*_V by cross-attention layer name
    base_fingerprint: str
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        vectors = self.token_embeddings  # one tensor: a pipeline with one text encoder
        self.token_embeddings = [vectors] if isinstance(vectors, torch.Tensor) else list(vectors)
        if not 1 <= len(self.token_embeddings) <= MAX_TEXT_ENCODERS:
            raise ConceptFileError(
                f"{self.token}: v* for {len(self.token_embeddings)} text encoders (1 to {MAX_TEXT_ENCODERS})"
            )

    def copy(self, device=None, dtype=None, value_device=None) -> "Concept":
        """A copy whose tensors share nothing with this one's: detached, on ``device`` (the value targets on
        ``value_device`` if given) and in ``dtype`` where given, as they are otherwise."""

        def own(tensor: torch.Tensor, to=None) -> torch.Tensor:
            return tensor.detach().to(to or device, dtype, copy=True)

        return replace(
            self,
            token_embeddings=[own(vector) for vector in self.token_embeddings],
            concept_encoding=own(self.concept_encoding),
            supercategory_encoding=own(self.supercategory_encoding),
            value_targets={layer: own(target, value_device) for layer, target in self.value_targets.items()},
            training=dict(self.training),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {embedding_name(tower): vector for tower, vector in enumerate(self.token_embeddings)}
        named.update({"concept_encoding": self.concept_encoding, "supercategory_encoding": self.supercategory_encoding})
        named.update({VALUE_PREFIX + layer: target for layer, target in self.value_targets.items()})
        return named

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "token": self.token,
            "supercategory": self.supercategory,
            "beta": repr(self.beta),
            "tau": repr(self.tau),
            "base_fingerprint": self.base_fingerprint,
            "training": json.dumps(self.training, sort_keys=True),
        }

    def save(self, path: str | Path, half: bool = False) -> Path:
        """Write atomically; ``half`` stores fp16 (the file halves, the values round)."""
        dtype = torch.float16 if half else torch.float32
        tensors = {name: tensor.detach().to(dtype) for name, tensor in self.tensors().items()}
        return atomic_save_safetensors(tensors, path, self.metadata())

    def validate(self, source: str) -> None:
        """Refuse (ConceptFileError naming ``source``) what would load and then draw NaNs or crash a generation.

        Only what the concept alone decides is checked here; widths against a pipeline are perfusion.pipeline.loader's.
        """
        check_metadata_values(self, source)
        named = self.tensors()
        if not self.value_targets:
            raise ConceptFileError(f"{source}: no value targets")
        for name, tensor in named.items():
            check_tensor(name, tensor, source)
        if self.concept_encoding.shape != self.supercategory_encoding.shape:
            raise ConceptFileError(
                f"{source}: i* and i*_super have different widths "
                f"({self.concept_encoding.numel()} and {self.supercategory_encoding.numel()})"
            )
        for name, label in (("concept_encoding", "i*"), ("supercategory_encoding", "i*_super")):
            norm = float(named[name].detach().float().norm())
            if norm < MIN_ENCODING_NORM:
                raise ConceptFileError(
                    f"{source}: {label} is zero or nearly (norm {norm:.3g}, below {MIN_ENCODING_NORM:g})"
                )

    @classmethod
    def load(cls, path: str | Path) -> "Concept":
        """Read and check a concept file; whatever is wrong with it is one ConceptFileError line that names it."""
        path = Path(path)
        try:
            exists = path.is_file()
        except OSError:  # a name too long for the file system, say
            exists = False
        if not exists:
            raise ConceptFileError(f"{path}: no such concept file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ConceptFileError(f"{path}: not a perfusion concept file")
                check_version(metadata, path)
                for name in handle.keys():  # from the header, before any tensor is read
                    check_layout(name, handle.get_slice(name).get_shape(), path)
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except ConceptFileError:
            raise
        except (
            Exception
        ) as error:  # a damaged file fails in safetensors in several ways (SafetensorError, OSError, ...)
            raise ConceptFileError(f"{path}: not a readable safetensors file ({one_line(error)})") from None
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise ConceptFileError(f"{path}: incomplete concept file (no {missing[0]!r} in its metadata)")
        missing = [name for name in ENCODING_NAMES if name not in tensors]
        if missing:
            raise ConceptFileError(f"{path}: incomplete concept file (no {missing[0]!r} tensor)")
        unexpected = [
            name
            for name in tensors
            if name not in (*ENCODING_NAMES, *EMBEDDING_NAMES) and not name.startswith(VALUE_PREFIX)
        ]
        if unexpected:
            raise ConceptFileError(f"{path}: unexpected tensor {shorten(unexpected[0])}")
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                raise ConceptFileError(
                    f"{path}: {name} holds {str(tensor.dtype).removeprefix('torch.')}: a concept file holds floats"
                )
        concept = cls(
            token=metadata["token"],
            supercategory=metadata["supercategory"],
            token_embeddings=[tensors[name].to(torch.float32) for name in EMBEDDING_NAMES if name in tensors],
            concept_encoding=tensors["concept_encoding"].to(torch.float32),
            supercategory_encoding=tensors["supercategory_encoding"].to(torch.float32),
            value_targets={
                name[len(VALUE_PREFIX) :]: tensor.to(torch.float32)
                for name, tensor in tensors.items()
                if name.startswith(VALUE_PREFIX)
            },
            base_fingerprint=metadata["base_fingerprint"],
            beta=parse_number(metadata, "beta", path),
            tau=parse_number(metadata, "tau", path),
            training=parse_training(metadata.get("training", "{}"), path),
        )
        concept.validate(str(path))
        return concept


# -- the checks ---------------------------------------------------------------------------------------
def shorten(value, limit: int = 40) -> str:
    """repr of ``value``, cut to ``limit`` characters: an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_version(metadata: dict[str, str], path) -> None:
    version = metadata.get("format_version")
    if version is None:
        raise ConceptFileError(f"{path}: no format version")
    if not VERSION_PATTERN.fullmatch(version):
        raise ConceptFileError(f"{path}: unreadable format version {shorten(version)}")
    if int(version) > FORMAT_VERSION:
        raise ConceptFileError(
            f"{path}: format version {int(version)} is newer than this perfusion reads ({FORMAT_VERSION})"
        )
    if int(version) < 1:
        raise ConceptFileError(
            f"{path}: format version {int(version)} is not one this perfusion reads (1 to {FORMAT_VERSION})"
        )


def check_layout(name: str, shape, source) -> None:
    """Every tensor is a non-empty vector of at most MAX_WIDTH values."""
    shape = tuple(shape)
    if len(shape) != 1:
        raise ConceptFileError(f"{source}: {shorten(name, 100)} has shape {shape}: a concept file holds 1-d vectors")
    if shape[0] == 0:
        raise ConceptFileError(f"{source}: {shorten(name, 100)} is empty")
    if shape[0] > MAX_WIDTH:
        raise ConceptFileError(
            f"{source}: {shorten(name, 100)} has {shape[0]} values, more than any model's width ({MAX_WIDTH})"
        )


def check_tensor(name: str, tensor, source: str) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        kind = str(tensor.dtype).removeprefix("torch.") if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ConceptFileError(f"{source}: {name} holds {kind}: a concept file holds floats")
    check_layout(name, tensor.shape, source)
    values = tensor.detach().float()
    if not torch.isfinite(values).all():
        raise ConceptFileError(f"{source}: {name} has NaN or infinite values")
    peak = float(values.abs().max())
    if peak > MAX_MAGNITUDE:
        raise ConceptFileError(f"{source}: {name} has values up to {peak:.6g}, beyond the bound {MAX_MAGNITUDE:g}")


def parse_number(metadata: dict[str, str], key: str, path) -> float:
    try:
        return float(metadata[key])
    except ValueError:
        raise ConceptFileError(f"{path}: {key} is not a number: {shorten(metadata[key])}") from None


def parse_training(text: str, path) -> dict:
    try:
        training = json.loads(text)
    except (ValueError, RecursionError):
        raise ConceptFileError(f"{path}: its training settings are not valid JSON") from None
    if not isinstance(training, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(training), "a number"
        )
        raise ConceptFileError(f"{path}: its training settings must be a JSON object, not {kind}")
    return training


def check_metadata_values(concept: Concept, source: str) -> None:
    token = concept.token
    if not isinstance(token, str) or not token:
        raise ConceptFileError(f"{source}: the token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ConceptFileError(f"{source}: the token is {len(token)} characters long (at most {MAX_TOKEN_LENGTH})")
    if not CONCEPT_TOKEN_PATTERN.fullmatch(token):
        raise ConceptFileError(f"{source}: the token must look like <name>, got {shorten(token)}")
    supercategory = concept.supercategory
    if not isinstance(supercategory, str) or not supercategory.strip():
        raise ConceptFileError(f"{source}: the supercategory is empty")
    if len(supercategory) > MAX_SUPERCATEGORY_LENGTH:
        raise ConceptFileError(
            f"{source}: the supercategory is {len(supercategory)} characters long (at most {MAX_SUPERCATEGORY_LENGTH})"
        )
    if not isinstance(concept.base_fingerprint, str):
        raise ConceptFileError(f"{source}: the base-model fingerprint is not text")
    if not isinstance(concept.training, dict):
        raise ConceptFileError(f"{source}: its training settings must be a dict, not {type(concept.training).__name__}")
    if concept.training.get("gate_scope", "all") not in GATE_SCOPES:
        raise ConceptFileError(
            f"{source}: gate_scope {shorten(concept.training['gate_scope'])} is not one of {', '.join(GATE_SCOPES)}"
        )
    for key, (low, high), low_open in (("beta", BETA_RANGE, False), ("tau", TAU_RANGE, True)):
        try:
            value = float(getattr(concept, key))
        except (TypeError, ValueError):
            raise ConceptFileError(f"{source}: {key} is not a number: {shorten(getattr(concept, key))}") from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not math.isfinite(value) or not inside:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise ConceptFileError(f"{source}: {key} must be in {interval}, got {value!r}")
    if concept.tau < MIN_TAU:  # a positive tau that float32 rounds to zero (or to a denormal a GPU flushes to zero)
        raise ConceptFileError(f"{source}: tau {concept.tau!r} is too small to compute with (at least {MIN_TAU:.3g})")
