"""Fuzzing concept files "from anywhere": mutate a real concept file of the tiny pipeline and load it.

Every case must end in one of two ways: ``Concept.load`` or ``load_concepts`` refuses it with a one-line
ConceptFileError that names the file (and the pipeline is left exactly as it was), or it loads and a 2-step
16x16 generation gives finite pixels. Anything else (another exception, a NaN image, a pipeline left
half-installed or not restored by unloading) is a failure.

    python benchmarks/fuzz_concepts.py --cases 10000 --seed 0

prints the cases per mutation kind and outcome and exits 1 on any failure. tests/test_concept_fuzz.py drives
the same generator (a few hundred cases).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from perfusion.concept.format import VALUE_PREFIX, Concept, ConceptFileError
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.covariance import estimate_covariance
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.testing import build_tiny_pipeline, handmade_concept, load_pipeline, small_corpus

OUTCOMES = ("refused by Concept.load", "refused by load_concepts", "loaded, finite", "FAILED")
MAX_MESSAGE = 600  # a refusal is one short line, however long the offending value


# -- the real file, in parts ------------------------------------------------------------------------
@dataclass
class Parts:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    def copy(self) -> "Parts":
        return Parts({name: tensor.clone() for name, tensor in self.tensors.items()}, dict(self.metadata))

    def serialize(self) -> bytes:
        return canonical(
            safetensors_bytes({name: tensor.contiguous() for name, tensor in self.tensors.items()}, self.metadata)
        )


def canonical(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes the metadata in a hash order that changes
    from run to run, and a seed's byte flips must hit the same places on every run."""
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


@dataclass
class Original:
    data: bytes
    header_end: int  # 8 + the JSON header's length: header bytes before, tensor bytes after
    parts: Parts

    @classmethod
    def read(cls, path: Path) -> "Original":
        from safetensors import safe_open

        data = canonical(path.read_bytes())
        with safe_open(str(path), framework="pt") as handle:
            parts = Parts({name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata()))
        return cls(data, 8 + int.from_bytes(data[:8], "little"), parts)


def value_layers(parts: Parts) -> list[str]:
    return [name for name in parts.tensors if name.startswith(VALUE_PREFIX)]


# -- byte-level mutations: bytes -> bytes ------------------------------------------------------------
def flip(rng: random.Random, data: bytes, start: int, end: int) -> tuple[str, bytes]:
    data = bytearray(data)
    count = rng.choice((1, 1, 2, 3, 5, 8))
    places = [rng.randrange(start, end) for _ in range(count)]
    for place in places:
        if rng.random() < 0.5:
            data[place] ^= 1 << rng.randrange(8)
        else:
            data[place] = rng.choice(b'0123456789.-+eE"{}[],:\\ abcfinNa\x00\xff\x80')
    return f"{count} bytes at {sorted(places)[:4]}", bytes(data)


def header_bytes(rng, original):
    return flip(rng, original.data, 0, original.header_end)


def body_bytes(rng, original):
    return flip(rng, original.data, original.header_end, len(original.data))


def truncate(rng, original):
    length = rng.choice(
        (
            0,
            1,
            7,
            8,
            rng.randrange(len(original.data)),
            original.header_end - 1,
            original.header_end,
            len(original.data) - 1,
            len(original.data) - 4,
        )
    )
    return f"to {length} bytes", original.data[:length]


def append(rng, original):
    tail = rng.choice(
        (b"\x00", b" " * rng.randrange(1, 64), bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    )
    return f"{len(tail)} bytes", original.data + tail


BYTE_MUTATIONS = {"header-bytes": header_bytes, "body-bytes": body_bytes, "truncate": truncate, "append": append}


# -- metadata mutations: edit Parts in place, return a description --------------------------------------
def set_field(key: str, values):
    def mutation(rng, parts: Parts) -> str:
        value = rng.choice(values)
        value = value(rng) if callable(value) else value
        parts.metadata[key] = value
        return f"{key}={value[:40]!r}{'...' if len(value) > 40 else ''}"

    return mutation


def deep_json(rng):
    depth = rng.choice((100, 5_000, 100_000))
    return rng.choice(("[" * depth + "]" * depth, '{"a": ' + "[" * depth + "]" * depth + "}"))


BETAS = (
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "-0.1",
    "1.5",
    "",
    "abc",
    "0",
    "1",
    "0.5",
    "1e308",
    "1e-400",
    " 0.3 ",
    "0.7\x00",
    "1_0",
    "-0",
    "0x1p-2",
    "2",
)
TAUS = ("0", "-0", "-0.1", "nan", "inf", "", "1e-30", "1e-45", "1e-50", "1", "1.0000001", "2", "0.01", "0.15", "1e-320")
VERSIONS = (
    "1.0",
    "one",
    "-1",
    "",
    " 1",
    "0",
    "1e0",
    "\u00b2",
    "\u0663",
    "99",
    "0001",
    "+1",
    "1 ",
    "2",
    lambda rng: "9" * rng.choice((10, 5000)),
)
TRAININGS = (
    "[1, 2]",
    "3",
    '"text"',
    "null",
    "not json",
    "{",
    "true",
    '{"steps": NaN}',
    "{}",
    '{"steps": 400}',
    deep_json,
    lambda rng: json.dumps({"notes": "x" * 100_000}),
)
TOKENS = (
    "",
    " ",
    "cat",
    "a",
    "photo",
    "<|endoftext|>",
    "<|startoftext|>",
    "<my cat>",
    "<mycat",
    "mycat>",
    "<>",
    "<<x>>",
    "<my\ncat>",
    "<\u732b>",
    "<MyCat>",
    "<\u200b>",
    "<\x00>",
    "<mycat>",
    "<\U0001f431cat>",
    "<a>",
    "<" + "x" * 62 + ">",
    "<" + "x" * 63 + ">",
    lambda rng: "<" + "x" * rng.choice((100, 10_000, 1_000_000)) + ">",
    lambda rng: "x" * rng.choice((65, 100_000)),
)
SUPERCATEGORIES = (
    "",
    " ",
    "\n",
    "cat dog",
    "\u732b",
    "<mycat>",
    "zzqx",
    "a" * 200,
    "a" * 201,
    "small red mug",
    lambda rng: "cat " * rng.choice((100, 25_000)),
)
FORMATS = ("", "pt", "perfusion-concept ", "PERFUSION-CONCEPT", "perfusion-concep")
FINGERPRINTS = ("", "0" * 32, "f" * 32, lambda rng: "%032x" % rng.getrandbits(128), lambda rng: "x" * 100_000)


def drop_key(rng, parts):
    key = rng.choice(sorted(parts.metadata))
    del parts.metadata[key]
    return f"without {key}"


def extra_key(rng, parts):
    key = rng.choice(("notes", "author", "__metadata__", "format_version2", "x" * 1000))
    parts.metadata[key] = rng.choice(("", "hello", "{}", "\x00"))
    return f"with {key[:20]}"


def no_metadata(rng, parts):
    parts.metadata.clear()
    return "no metadata"


METADATA_MUTATIONS = {
    "beta": set_field("beta", BETAS),
    "tau": set_field("tau", TAUS),
    "format-version": set_field("format_version", VERSIONS),
    "training": set_field("training", TRAININGS),
    "token": set_field("token", TOKENS),
    "supercategory": set_field("supercategory", SUPERCATEGORIES),
    "format": set_field("format", FORMATS),
    "fingerprint": set_field("base_fingerprint", FINGERPRINTS),
    "drop-key": drop_key,
    "extra-key": extra_key,
    "no-metadata": no_metadata,
}


# -- tensor mutations -------------------------------------------------------------------------------
def pick(rng, parts: Parts, names=None) -> str:
    return rng.choice(sorted(names if names is not None else parts.tensors))


def some_elements(rng, tensor: torch.Tensor) -> torch.Tensor:
    """A boolean mask: one element, a few, or all of them."""
    mask = torch.zeros(tensor.shape, dtype=torch.bool)
    if tensor.numel() == 0:
        return mask
    choice = rng.random()
    if choice < 0.4:
        mask.view(-1)[rng.randrange(tensor.numel())] = True
    elif choice < 0.8:
        for _ in range(rng.randint(2, 6)):
            mask.view(-1)[rng.randrange(tensor.numel())] = True
    else:
        mask[...] = True
    return mask


def replace_values(values):
    def mutation(rng, parts):
        name = pick(rng, parts)
        value = rng.choice(values)
        tensor = parts.tensors[name].clone()
        if abs(value) > 3e38:  # beyond float32: stored as float64
            tensor = tensor.double()
        tensor[some_elements(rng, tensor)] = value
        parts.tensors[name] = tensor
        return f"{name} <- {value}"

    return mutation


def zero_encoding(rng, parts):
    names = rng.choice(
        (["concept_encoding"], ["supercategory_encoding"], ["concept_encoding", "supercategory_encoding"])
    )
    for name in names:
        parts.tensors[name] = torch.zeros_like(parts.tensors[name])
    return "zero " + " and ".join(names)


def zero_file(rng, parts):
    for name in parts.tensors:
        parts.tensors[name] = torch.zeros_like(parts.tensors[name])
    return "every tensor zero"


def scale(factors):
    def mutation(rng, parts):
        name = pick(rng, parts)
        factor = rng.choice(factors)
        tensor = parts.tensors[name].double()
        peak = tensor.abs().max()
        target = factor(rng) if callable(factor) else factor
        scaled = tensor / peak * target
        parts.tensors[name] = scaled.float() if abs(target) < 3e38 else scaled
        return f"{name} scaled to max |x| = {target:.3g}"

    return mutation


def shape(rng, parts):
    name = pick(rng, parts)
    tensor = parts.tensors[name]
    width = tensor.numel()
    shapes = [
        (width + 1,),
        (width - 1,),
        (1,),
        (2 * width,),
        (width, 1),
        (1, width),
        (),
        (2, width),
        (width // 2, 2),
        (width, width),
    ]
    new = rng.choice(shapes)
    numel = int(np.prod(new)) if new else 1
    if numel == width:
        parts.tensors[name] = tensor.reshape(new)
    else:
        parts.tensors[name] = (
            torch.randn(new, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) * tensor.std()
        )
    return f"{name} of shape {tuple(new)}"


def empty(rng, parts):
    name = pick(rng, parts)
    new = rng.choice(((0,), (0, parts.tensors[name].numel()), (parts.tensors[name].numel(), 0)))
    parts.tensors[name] = torch.zeros(new)
    return f"{name} of shape {new}"


DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)


def dtype(rng, parts):
    names = rng.choice(([pick(rng, parts)], sorted(parts.tensors)))
    new = rng.choice(DTYPES)
    for name in names:
        tensor = parts.tensors[name]
        if new == torch.bool:
            parts.tensors[name] = tensor > 0
        elif not new.is_floating_point:
            parts.tensors[name] = (tensor * 10).round().clamp(0 if new == torch.uint8 else -100, 100).to(new)
        else:
            parts.tensors[name] = tensor.to(new)
    return f"{len(names)} tensor(s) as {new}"


def missing_layer(rng, parts):
    layers = value_layers(parts)
    dropped = rng.choice(([rng.choice(layers)], layers))
    for name in dropped:
        del parts.tensors[name]
    return f"without {len(dropped)} value target(s)"


def extra_layer(rng, parts):
    layers = value_layers(parts)
    name = rng.choice(
        (
            VALUE_PREFIX,
            VALUE_PREFIX + "down_blocks.9.attentions.0.transformer_blocks.0.attn2",
            rng.choice(layers) + ".x",
            rng.choice(layers).replace("attn2", "attn1"),
        )
    )
    parts.tensors[name] = parts.tensors[rng.choice(layers)].clone()
    return f"with {name}"


def missing_tensor(rng, parts):
    name = rng.choice(("token_embedding", "concept_encoding", "supercategory_encoding"))
    del parts.tensors[name]
    return f"without {name}"


def extra_tensor(rng, parts):
    name = rng.choice(("junk", "lora_A", "inverse_covariance", "token_embedding.1"))
    parts.tensors[name] = torch.randn(rng.choice((4, 32)))
    return f"with {name}"


def swap(rng, parts):
    first, second = rng.sample(sorted(parts.tensors), 2)
    parts.tensors[first], parts.tensors[second] = parts.tensors[second], parts.tensors[first]
    return f"{first} <-> {second}"


def noise(rng, parts):
    names = rng.sample(sorted(parts.tensors), rng.randint(1, len(parts.tensors)))
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    how = rng.choice(("noise", "negate", "permute"))
    for name in names:
        tensor = parts.tensors[name]
        if how == "noise":
            tensor = tensor + rng.uniform(0, 2) * tensor.std() * torch.randn(tensor.shape, generator=generator)
        elif how == "negate":
            tensor = -tensor
        else:
            tensor = tensor[torch.randperm(tensor.numel(), generator=generator)]
        parts.tensors[name] = tensor
    return f"{how} on {len(names)} tensor(s)"


TENSOR_MUTATIONS = {
    "nan": replace_values((float("nan"),)),
    "inf": replace_values((float("inf"), float("-inf"))),
    "zero-encoding": zero_encoding,
    "zero-file": zero_file,
    "huge": replace_values((1e30, -1e30, 1e5, 3e38, 1e300, -1e300, 10_001.0)),
    "in-bound": scale((1e4, -1e4, 5e3, 1e3, 1e2, lambda rng: rng.uniform(1, 1e4))),
    "tiny": scale((1e-2, 1e-4, 1e-6, 1e-30, 1e-40, 1e-44, 0.0)),
    "shape": shape,
    "empty": empty,
    "dtype": dtype,
    "missing-layer": missing_layer,
    "extra-layer": extra_layer,
    "missing-tensor": missing_tensor,
    "extra-tensor": extra_tensor,
    "swap": swap,
    "noise": noise,
}
PARTS_MUTATIONS = METADATA_MUTATIONS | TENSOR_MUTATIONS


def combo(rng, original):
    parts = original.parts.copy()
    kinds = rng.sample(sorted(PARTS_MUTATIONS), rng.randint(2, 3))
    descriptions = []
    for kind in kinds:
        try:
            descriptions.append(f"{kind}: {PARTS_MUTATIONS[kind](rng, parts)}")
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError):  # an earlier edit left nothing to edit
            descriptions.append(f"{kind}: not applicable")
    data = parts.serialize()
    if rng.random() < 0.2:
        kind = rng.choice(sorted(BYTE_MUTATIONS))
        description, data = BYTE_MUTATIONS[kind](rng, Original(data, 8 + int.from_bytes(data[:8], "little"), parts))
        descriptions.append(f"{kind}: {description}")
    return "; ".join(descriptions), data


KINDS = sorted(BYTE_MUTATIONS) + sorted(METADATA_MUTATIONS) + sorted(TENSOR_MUTATIONS) + ["combo"]


def mutate(rng: random.Random, original: Original, kind: str) -> tuple[str, bytes]:
    """One mutated file of ``kind``: (a description, the file's bytes)."""
    if kind in BYTE_MUTATIONS:
        return BYTE_MUTATIONS[kind](rng, original)
    if kind == "combo":
        return combo(rng, original)
    parts = original.parts.copy()
    description = PARTS_MUTATIONS[kind](rng, parts)
    return description, parts.serialize()


# -- loading a case and judging it ------------------------------------------------------------------
class CaseFailure(AssertionError):
    """The case ended in neither a clean refusal nor finite images."""


def pipeline_state(pipe) -> tuple:
    """What loading may change, and unloading or a refusal must put back."""
    return (
        find_runtime(pipe) is None,
        len(pipe.tokenizer),
        tuple(pipe.text_encoder.get_input_embeddings().weight.shape),
        tuple((name, type(processor)) for name, processor in pipe.unet.attn_processors.items()),
        len(pipe.text_encoder._forward_hooks),
        len(pipe.unet._forward_pre_hooks),
        len(pipe.unet._forward_hooks),
        len(pipe.text_encoder.get_input_embeddings()._forward_hooks),
    )


class Harness:
    """One tiny pipeline, its C^-1 and a real concept file; ``run(data)`` judges one mutated file."""

    def __init__(self, workdir: Path, folder: Path | None = None):
        self.workdir = Path(workdir)
        self.folder = folder or build_tiny_pipeline(self.workdir / "tiny")
        self.pipe = load_pipeline(self.folder)
        self.stock = pipeline_state(self.pipe)
        with torch.no_grad():
            self.inverse = torch.linalg.inv(estimate_covariance(TextConditioning.of(self.pipe), small_corpus()))
        self.original_path = handmade_concept(self.pipe).save(self.workdir / "original.safetensors")
        self.original = Original.read(self.original_path)
        self.path = self.workdir / "case.safetensors"
        self.count = 0

    def refusal(self, error: ConceptFileError, stage: str) -> None:
        message = str(error)
        if str(self.path) not in message:
            raise CaseFailure(f"{stage}'s refusal does not name the file: {message[:200]!r}")
        if "\n" in message or len(message) > MAX_MESSAGE:
            raise CaseFailure(f"{stage}'s refusal is not one short line ({len(message)} characters): {message[:200]!r}")

    def run(self, data: bytes) -> str:
        """The outcome of one file's bytes; raises CaseFailure (or whatever escaped) when the case fails."""
        self.count += 1
        self.path.write_bytes(data)
        try:
            concept = Concept.load(self.path)
        except ConceptFileError as error:
            self.refusal(error, "Concept.load")
            return OUTCOMES[0]
        before = pipeline_state(self.pipe)
        try:
            load_concepts(self.pipe, self.path, inverse_covariance=self.inverse)
        except ConceptFileError as error:
            self.refusal(error, "load_concepts")
            if pipeline_state(self.pipe) != before:
                raise CaseFailure("load_concepts refused the file but left the pipeline changed") from None
            return OUTCOMES[1]
        try:
            config = GenerationConfig(
                num_inference_steps=2, guidance_scale=5.0, seed=self.count, global_lock=bool(self.count % 2)
            )
            pixels = generate(
                self.pipe, f"a photo of a {concept.token} on a sofa", config, height=16, width=16, output_type="np"
            )
            if not np.isfinite(pixels).all():
                raise CaseFailure("the concept loaded but gave non-finite pixels")
        finally:
            unload_concepts(self.pipe)
        if pipeline_state(self.pipe) != self.stock:
            raise CaseFailure("unloading did not restore the pipeline")
        return OUTCOMES[2]

    def recover(self) -> None:
        """After a failure: a pipeline as it was, whatever the failure left."""
        try:
            unload_concepts(self.pipe)
        except Exception:  # noqa: BLE001 - the pipeline is replaced below anyway
            pass
        if pipeline_state(self.pipe) != self.stock:
            self.pipe = load_pipeline(self.folder)


def fuzz(harness: Harness, cases: int, seed: int, failures: list | None = None, log=None) -> Counter:
    """``cases`` mutations, the kinds in turn; counts (kind, outcome). Failures go to ``failures`` as
    (kind, description, error)."""
    rng = random.Random(seed)
    counts: Counter = Counter()
    for index in range(cases):
        kind = KINDS[index % len(KINDS)]
        description, data = mutate(rng, harness.original, kind)
        try:
            outcome = harness.run(data)
        except Exception as error:  # noqa: BLE001 - every escape is a failure to report
            outcome = OUTCOMES[3]
            if failures is not None:
                failures.append(
                    (kind, description, f"{type(error).__name__}: {str(error)[:300]}", traceback.format_exc())
                )
            harness.recover()
        counts[kind, outcome] += 1
        if log and (index + 1) % 1000 == 0:
            log(f"{index + 1} cases, {sum(n for (_, o), n in counts.items() if o == OUTCOMES[3])} failed")
    return counts


def table(counts: Counter) -> str:
    kinds = [kind for kind in KINDS if any(counts[kind, outcome] for outcome in OUTCOMES)]
    width = max(len(kind) for kind in kinds + ["total"])
    lines = [f"{'kind':<{width}}  " + "  ".join(f"{outcome:>{len(outcome)}}" for outcome in OUTCOMES) + "  total"]
    for kind in kinds + ["total"]:
        row = [
            sum(counts[k, outcome] for k in kinds) if kind == "total" else counts[kind, outcome] for outcome in OUTCOMES
        ]
        lines.append(
            f"{kind:<{width}}  " + "  ".join(f"{n:>{len(o)}}" for n, o in zip(row, OUTCOMES)) + f"  {sum(row):>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=20, help="failures to print in full")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: one thread is as fast
    start = time.time()
    failures: list = []
    with tempfile.TemporaryDirectory() as workdir:
        harness = Harness(Path(workdir))
        counts = fuzz(
            harness, args.cases, args.seed, failures, log=lambda line: print(line, file=sys.stderr, flush=True)
        )
    print(table(counts))
    print(f"{args.cases} cases, seed {args.seed}, {time.time() - start:.0f} s")
    for kind, description, error, trace in failures[: args.show]:
        print(f"\nFAILED {kind} ({description}): {error}\n{trace}")
    if failures:
        print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
