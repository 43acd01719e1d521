"""The concept file: size at SD1.5 dimensions, bit-exact round trip, clear refusals."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import Concept, ConceptFileError
from perfusion.testing import SD15_UNET

KB = 1000  # the 100KB: 100,000 bytes


def sd15_concept(seed=0) -> Concept:
    with torch.device("meta"):  # shapes only, no memory
        unet = UNet2DConditionModel(cross_attention_dim=768, **SD15_UNET)
    layers = cross_attention_modules(unet)
    generator = torch.Generator().manual_seed(seed)
    return Concept(
        token="<mycat>",
        supercategory="cat",
        token_embeddings=[torch.randn(768, generator=generator)],
        concept_encoding=torch.randn(768, generator=generator),
        supercategory_encoding=torch.randn(768, generator=generator),
        value_targets={name: torch.randn(m.to_v.out_features, generator=generator) for name, m in layers.items()},
        base_fingerprint="f" * 32,
        training={"steps": 400, "templates": ["a photo of a {}"]},
    )


def test_sd15_layout_is_sixteen_layers_of_12480_values():
    concept = sd15_concept()
    assert len(concept.value_targets) == 16
    assert sum(t.numel() for t in concept.value_targets.values()) == 12_480


def test_sd15_concept_file_is_under_100kb_in_fp32_and_halves_in_fp16(tmp_path):
    full = sd15_concept().save(tmp_path / "full.safetensors")
    half = sd15_concept().save(tmp_path / "half.safetensors", half=True)
    assert full.stat().st_size <= 100 * KB
    assert half.stat().st_size <= 0.55 * full.stat().st_size


def test_save_load_is_bit_exact(tmp_path):
    concept = sd15_concept()
    loaded = Concept.load(concept.save(tmp_path / "c.safetensors"))
    for name, tensor in concept.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert (loaded.token, loaded.supercategory, loaded.beta, loaded.tau) == (
        "<mycat>",
        "cat",
        concept.beta,
        concept.tau,
    )
    assert loaded.base_fingerprint == concept.base_fingerprint and loaded.training == concept.training
    assert set(loaded.value_targets) == set(concept.value_targets)


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ConceptFileError, match="no such concept file"):
        Concept.load(tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ConceptFileError, match="not a readable safetensors"):
        Concept.load(corrupt)
    foreign = tmp_path / "lora.safetensors"
    save_file({"lora_A": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ConceptFileError, match="not a perfusion concept"):
        Concept.load(foreign)


def test_newer_format_version_is_refused(tmp_path):
    concept = sd15_concept()
    metadata = concept.metadata() | {"format_version": "99"}
    path = tmp_path / "future.safetensors"
    save_file({k: v.contiguous() for k, v in concept.tensors().items()}, str(path), metadata=metadata)
    with pytest.raises(ConceptFileError, match="newer"):
        Concept.load(path)


def test_nothing_per_token_position_and_no_inverse_covariance(tmp_path):
    path = sd15_concept().save(tmp_path / "c.safetensors")
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    shapes = [entry["shape"] for name, entry in header.items() if name != "__metadata__"]
    assert all(len(shape) == 1 for shape in shapes)  # vectors only: no (77, width) or (768, 768) tables
