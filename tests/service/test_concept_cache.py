"""The service's concept cache: bounded, least recently used out first, and never recomputing C."""

import pytest
import torch

from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.covariance import estimate_covariance
from perfusion.pipeline.loader import loaded_tokens
from perfusion.service.concept_cache import ConceptCache
from perfusion.testing import handmade_concept, small_corpus


@pytest.fixture
def cache(tiny_pipe, tmp_path, monkeypatch):
    inverse = torch.linalg.inv(estimate_covariance(TextConditioning.of(tiny_pipe), small_corpus()))
    for concept_id in range(1, 5):
        handmade_concept(tiny_pipe, "<same>", seed=concept_id).save(tmp_path / f"{concept_id}.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("C was recomputed")

    monkeypatch.setattr("perfusion.pipeline.covariance.estimate_covariance", refuse)
    monkeypatch.setattr("perfusion.pipeline.loader.covariance.inverse_covariance", refuse)
    return ConceptCache(tiny_pipe, tmp_path, capacity=3, inverse_covariance=inverse)


def test_concepts_load_under_the_services_tokens_without_recomputing_c(cache, tiny_pipe):
    assert cache.ensure({1, 2}) == {1: "<pc1>", 2: "<pc2>"}
    assert loaded_tokens(tiny_pipe) == ["<pc1>", "<pc2>"]


def test_the_least_recently_used_concept_leaves_first(cache, tiny_pipe):
    cache.ensure({1, 2, 3})
    cache.ensure({1})  # 1 used again: 2 is now the oldest
    cache.ensure({4})
    assert sorted(loaded_tokens(tiny_pipe)) == ["<pc1>", "<pc3>", "<pc4>"]


def test_unloading_every_concept_and_loading_again_needs_no_c(cache, tiny_pipe):
    cache.ensure({1})
    cache.unload([1])
    assert loaded_tokens(tiny_pipe) == []
    cache.ensure({2})  # the pipeline's edit is installed again, with the C^-1 given at start
    assert loaded_tokens(tiny_pipe) == ["<pc2>"]


def test_a_batch_with_more_concepts_than_the_cache_holds_is_refused(cache):
    with pytest.raises(ValueError, match="4 concepts in one batch"):
        cache.ensure({1, 2, 3, 4})
