"""Concept files from anywhere: every mutated file is refused with one clear line naming it, or loads and draws
finite images; a refusal leaves the pipeline as it was. The mutations are benchmarks/fuzz_concepts.py's."""

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from perfusion.concept.format import MAX_MAGNITUDE, Concept, ConceptFileError
from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.testing import handmade_concept


def fuzz_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_concepts.py"
    spec = importlib.util.spec_from_file_location("fuzz_concepts", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_concepts"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = fuzz_module()


@pytest.fixture(scope="module")
def harness(tiny_pipeline_dir, tmp_path_factory):
    return fuzz.Harness(tmp_path_factory.mktemp("fuzz"), tiny_pipeline_dir)


@pytest.fixture(autouse=True)
def stock_pipeline_after(harness):
    """Each test starts from the stock pipeline, whatever the one before it left."""
    yield
    harness.recover()


def edited(harness, tmp_path, edit) -> Path:
    """The real concept file with ``edit(parts)`` applied, written to tmp_path."""
    parts = harness.original.parts.copy()
    edit(parts)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(parts.serialize())
    return path


def refused(path, match: str) -> str:
    with pytest.raises(ConceptFileError, match=match) as error:
        Concept.load(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message and len(message) < fuzz.MAX_MESSAGE, message
    return message


def set_tensor(name, value):
    def edit(parts):
        parts.tensors[name] = value(parts.tensors[name]) if callable(value) else value

    return edit


def set_metadata(key, value):
    def edit(parts):
        parts.metadata[key] = value

    return edit


# -- named cases (each loaded silently and drew NaN images, or crashed generation, before) ------------------------
@pytest.mark.parametrize(
    "name, value, match",
    [
        ("concept_encoding", lambda t: torch.where(torch.arange(t.numel()) == 3, float("nan"), t), "NaN or infinite"),
        ("token_embedding", lambda t: torch.full_like(t, float("inf")), "NaN or infinite"),
        (
            "value_targets.down_blocks.0.attentions.0.transformer_blocks.0.attn2",
            lambda t: t * float("-inf"),
            "NaN or infinite",
        ),
        ("concept_encoding", torch.zeros_like, "i\\* is zero"),
        ("supercategory_encoding", torch.zeros_like, "i\\*_super is zero"),
        ("supercategory_encoding", lambda t: t * 1e30, "bound"),
        (
            "value_targets.up_blocks.1.attentions.0.transformer_blocks.0.attn2",
            lambda t: t.double() * 1e300,
            "NaN or infinite|bound",
        ),
        ("concept_encoding", lambda t: torch.zeros(0), "empty"),
        ("token_embedding", lambda t: t.reshape(1, -1), "1-d"),
        ("concept_encoding", lambda t: (t * 10).to(torch.int32), "float"),
        ("supercategory_encoding", lambda t: t > 0, "float"),
        ("concept_encoding", lambda t: t[:-1], "width"),  # i* and i*_super of different widths
    ],
)
def test_bad_tensor_values_are_refused(harness, tmp_path, name, value, match):
    refused(edited(harness, tmp_path, set_tensor(name, value)), match)


def test_all_zero_file_is_refused(harness, tmp_path):
    def zero(parts):
        parts.tensors = {name: torch.zeros_like(tensor) for name, tensor in parts.tensors.items()}

    refused(edited(harness, tmp_path, zero), "zero")


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("beta", "nan", "beta"),
        ("beta", "inf", "beta"),
        ("beta", "1.5", "beta"),
        ("beta", "-0.1", "beta"),
        ("tau", "0", "tau"),
        ("tau", "nan", "tau"),
        ("tau", "-1", "tau"),
        ("tau", "1e-50", "tau"),
        ("tau", "2", "tau"),
        ("format_version", "1.0", "format version"),
        ("format_version", "\u00b2", "format version"),
        ("format_version", "9" * 5000, "format version"),
        ("format_version", "0", "format version"),
        ("training", "[1, 2]", "training"),
        ("training", "null", "training"),
        ("training", "[" * 100_000, "training"),
        ("token", "", "token"),
        ("token", "<" + "x" * 100_000 + ">", "token"),
        ("token", "cat", "token"),
        ("token", "<my cat>", "token"),
        ("supercategory", "", "supercategory"),
        ("supercategory", "cat " * 1000, "supercategory"),
    ],
)
def test_bad_metadata_is_refused(harness, tmp_path, key, value, match):
    refused(edited(harness, tmp_path, set_metadata(key, value)), match)


def stock_state(pipe):
    return fuzz.pipeline_state(pipe)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            set_tensor(
                "value_targets.down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                lambda t: torch.randn(t.numel() * 2),
            ),
            "width",
        ),
        (set_tensor("token_embedding", lambda t: torch.randn(t.numel() + 1)), "width"),
        (
            lambda parts: [
                parts.tensors.__setitem__(name, torch.randn(48))
                for name in ("concept_encoding", "supercategory_encoding")
            ],
            "width",
        ),
        (
            lambda parts: parts.tensors.pop("value_targets.up_blocks.1.attentions.0.transformer_blocks.0.attn2"),
            "layers",
        ),
        (set_tensor("value_targets.down_blocks.9.attentions.0.transformer_blocks.0.attn2", torch.randn(16)), "layers"),
        (set_metadata("token", "<|endoftext|>"), "already a word"),
        (set_metadata("base_fingerprint", "0" * 32), "another base model"),
    ],
)
def test_files_that_do_not_fit_the_pipeline_are_refused_before_anything_changes(harness, tmp_path, edit, match):
    path = edited(harness, tmp_path, edit)
    Concept.load(path)  # a well-formed file ...
    pipe = harness.pipe
    before = stock_state(pipe)
    with pytest.raises(ConceptFileError, match=match) as error:  # ... that this pipeline cannot take
        load_concepts(pipe, path, inverse_covariance=harness.inverse)
    assert str(path) in str(error.value)
    assert stock_state(pipe) == before and find_runtime(pipe) is None


def test_concept_objects_are_checked_too(harness):
    concept = handmade_concept(harness.pipe)
    concept.concept_encoding = torch.full_like(concept.concept_encoding, float("nan"))
    with pytest.raises(ConceptFileError, match="concept <mycat>: .*NaN or infinite"):
        load_concepts(harness.pipe, concept, inverse_covariance=harness.inverse)
    assert stock_state(harness.pipe) == harness.stock


def test_installation_is_all_or_nothing(harness, monkeypatch):
    """A failure after both concepts' tokens went in (one textual-inversion call adds them together) takes them out
    again: no runtime, no token, no processor."""
    pipe = harness.pipe
    first, second = handmade_concept(pipe, "<mycat>", "cat", seed=1), handmade_concept(pipe, "<mymug>", "mug", seed=2)
    original = pipe.load_textual_inversion

    def failing(*args, **kwargs):
        original(*args, **kwargs)
        assert "<mymug>" in pipe.tokenizer.get_vocab()
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipe, "load_textual_inversion", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_concepts(pipe, [first, second], inverse_covariance=harness.inverse)
    assert stock_state(pipe) == harness.stock and "<mycat>" not in pipe.tokenizer.get_vocab()
    monkeypatch.undo()
    # ... and with a concept already loaded, only this call's concepts go: the earlier one stays, working.
    load_concepts(pipe, first, inverse_covariance=harness.inverse)
    loaded = stock_state(pipe)
    monkeypatch.setattr(pipe, "load_textual_inversion", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("again")))
    with pytest.raises(RuntimeError, match="again"):
        load_concepts(pipe, second, inverse_covariance=harness.inverse)
    monkeypatch.undo()
    assert stock_state(pipe) == loaded and list(find_runtime(pipe).concepts) == ["<mycat>"]
    unload_concepts(pipe)
    assert stock_state(pipe) == harness.stock


def test_values_at_the_bound_load_and_draw_finite_images(harness, tmp_path):
    def at_bound(parts):
        for name, tensor in parts.tensors.items():
            parts.tensors[name] = tensor / tensor.abs().max() * MAX_MAGNITUDE

    assert harness.run(edited(harness, tmp_path, at_bound).read_bytes()) == fuzz.OUTCOMES[2]


def test_the_real_file_loads_and_every_kind_runs(harness):
    """Two cases of every mutation kind through the script's own loop and table."""
    failures = []
    counts = fuzz.fuzz(harness, 2 * len(fuzz.KINDS), seed=1, failures=failures)
    assert not failures, failures[0][:3]
    assert {kind for kind, _ in counts} == set(fuzz.KINDS)
    assert "total" in fuzz.table(counts)
    assert harness.run(harness.original.data) == fuzz.OUTCOMES[2]


# -- the property: a few hundred random mutations, fixed seed ------------------------------------------------------
@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(fuzz.KINDS), seed=st.integers(0, 2**32 - 1))
def test_every_mutation_is_refused_cleanly_or_draws_finite_images(harness, kind, seed):
    description, data = fuzz.mutate(random.Random(seed), harness.original, kind)
    note(f"{kind}: {description}")
    try:
        harness.run(data)
    except BaseException:
        harness.recover()
        raise
