"""Prompts a user may write around a concept token: each works, warns, or is refused with one clear line."""

import warnings

import numpy as np
import pytest
import torch

from perfusion.pipeline.generation import GenerationConfig, GenerationError, check_prompt, generate
from perfusion.pipeline.loader import load_concepts
from perfusion.pipeline.settings import set_global_lock
from perfusion.pipeline.text import encode, tokenize
from perfusion.testing import handmade_concept, routed_entries, small_corpus

CAPTIONS = small_corpus()
LIMIT = 75  # the tiny pipeline's tokenizer keeps 77 ids: start, 75 of the prompt's, end


def images(pipe, prompt, seed=0):
    config = GenerationConfig(num_inference_steps=2, guidance_scale=5.0, seed=seed, global_lock=False)
    return np.stack([np.asarray(image) for image in generate(pipe, prompt, config)])


@pytest.fixture
def cat_pipe(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    return tiny_pipe


def concept_id(pipe, token="<mycat>"):
    return pipe.tokenizer.convert_tokens_to_ids(token)


def cut_off_warnings(pipe, prompt):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_prompt(pipe, prompt)
    return [str(item.message) for item in caught if "cut off" in str(item.message)]


def test_the_token_twice_has_both_positions_edited(cat_pipe):
    """Both occurrences are the concept's id, and global key locking gives both the supercategory's keys."""
    ids = tokenize(cat_pipe.tokenizer, ["<mycat> next to a <mycat>"])
    assert (ids == concept_id(cat_pipe)).sum() == 2
    with torch.no_grad():
        expected = encode(cat_pipe.text_encoder, tokenize(cat_pipe.tokenizer, ["cat next to a cat"]))[0]
    set_global_lock(cat_pipe, True)
    torch.testing.assert_close(routed_entries(cat_pipe, [ids])[0].key_encodings, expected)
    set_global_lock(cat_pipe, False)
    check_prompt(cat_pipe, "<mycat> next to a <mycat>")


def test_the_token_glued_to_punctuation_is_the_concept(cat_pipe):
    """The tokenizer matches an added token as a whole string, so "<mycat>," splits into the concept and ","."""
    glued = tokenize(cat_pipe.tokenizer, ["a photo of a <mycat>, on a sofa"])
    assert concept_id(cat_pipe) in glued[0].tolist()
    assert torch.equal(glued, tokenize(cat_pipe.tokenizer, ["a photo of a <mycat> , on a sofa"]))
    assert np.array_equal(
        images(cat_pipe, "a photo of a <mycat>, on a sofa"), images(cat_pipe, "a photo of a <mycat> , on a sofa")
    )


def test_the_token_in_capitals_is_refused_with_the_loaded_token_suggested(cat_pipe):
    with pytest.raises(
        GenerationError,
        match=r"unknown token <MYCAT> in the prompt: concept tokens are "
        r"case-sensitive, did you mean <mycat>\?",
    ):
        check_prompt(cat_pipe, "a photo of a <MYCAT>")


def test_an_empty_prompt_gives_the_stock_image(tiny_pipe):
    stock = images(tiny_pipe, "")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    assert np.array_equal(images(tiny_pipe, ""), stock)


def test_non_ascii_text_around_the_concept_works(cat_pipe):
    prompt = "a photo of a <mycat> on a café sofa, 猫, 🐱, <mycat>の"
    check_prompt(cat_pipe, prompt)
    assert (tokenize(cat_pipe.tokenizer, [prompt]) == concept_id(cat_pipe)).sum() == 2
    assert images(cat_pipe, prompt).shape == (1, 16, 16, 3)


def test_a_concept_cut_off_by_the_length_limit_warns_and_still_generates(cat_pipe):
    prompt = "cat " * 80 + "<mycat>"
    with pytest.warns(UserWarning, match=r"<mycat> falls past the text encoder's limit of 77 tokens and was cut off"):
        result = images(cat_pipe, prompt)
    assert result.shape == (1, 16, 16, 3)


def test_the_limit_is_where_the_tokenizer_cuts(cat_pipe):
    assert cut_off_warnings(cat_pipe, "cat " * (LIMIT - 1) + "<mycat>") == []  # the last id kept
    assert len(cut_off_warnings(cat_pipe, "cat " * LIMIT + "<mycat>")) == 1  # the first id cut


def test_a_long_prompt_with_the_concept_inside_the_limit_does_not_warn(cat_pipe):
    assert cut_off_warnings(cat_pipe, "a photo of a <mycat> " + "on a sofa " * 40) == []


def test_a_second_occurrence_cut_off_warns_that_only_the_earlier_acts(cat_pipe):
    (message,) = cut_off_warnings(cat_pipe, "a <mycat> " + "cat " * 80 + "<mycat>")
    assert "1 of the 2 <mycat> falls past the text encoder's limit of 77 tokens and was cut off" in message
    assert "only the first one still acts" in message
