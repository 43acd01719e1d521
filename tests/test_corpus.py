import re
import shutil
from importlib.resources import files

import pytest

from perfusion.pipeline.corpus import (
    MODEL_CAPTIONS,
    PROMPT_SHARE,
    SLOT_UNIONS,
    caption_templates,
    default_captions,
    load_captions,
    model_captions,
    prompt_phrases,
    word_list,
)
from perfusion.pipeline.covariance import corpus_digest
from perfusion.testing import load_pipeline

SLOT = re.compile(r"\{(\w+)(:s)?\}")
MIN_WORDS, MAX_WORDS = 3, 30  # templated captions: typical short prompt lengths
TEMPLATED_DIGEST = "6486da043268b5b6"  # the packaged corpus before the phrases: what concept files of then record


@pytest.fixture(scope="module")
def captions():
    return default_captions()


def template_slots():
    return {slot for template in caption_templates() for slot, _ in SLOT.findall(template)}


def test_same_seed_same_captions_other_seed_others(captions):
    assert default_captions(20000, seed=0) == captions
    assert default_captions(500, seed=0) == captions[:500]
    assert default_captions(500, seed=1) != captions[:500]
    assert default_captions(0) == []


def test_captions_are_diverse(captions):
    assert len(captions) == 20000
    assert len(set(captions)) >= 15000
    words = {word for caption in captions for word in caption.replace(",", " ").split()}
    assert len(words) >= 8000  # the templates alone have under 900


def test_without_phrases_the_corpus_is_the_templated_one_of_before():
    assert corpus_digest(default_captions(10000, prompt_share=0)) == TEMPLATED_DIGEST


def test_about_half_the_captions_carry_prompt_phrases(captions):
    phrases = set(prompt_phrases())
    extended = sum(", " in caption and caption.rsplit(", ", 1)[1] in phrases for caption in captions) / len(captions)
    # 20000 draws: the standard error is 0.0035; a template's own last comma part may be a phrase too (a few %)
    assert PROMPT_SHARE - 0.01 < extended < PROMPT_SHARE + 0.04


def test_long_captions_reach_clip_length(captions):
    lengths = sorted(len(caption.split()) for caption in captions)
    assert lengths[-1] >= 55  # CLIP's 77 tokens are about 55-60 words of prompt text
    assert lengths[len(lengths) * 9 // 10] > MAX_WORDS  # a tenth are longer than any templated caption


def test_many_templates_and_several_hundred_words():
    assert len(caption_templates()) >= 60
    slot_files = {slot for slot in template_slots() if slot not in SLOT_UNIONS}
    slot_files |= {part for slot in template_slots() & SLOT_UNIONS.keys() for part in SLOT_UNIONS[slot]}
    assert sum(len(word_list(slot)) for slot in slot_files) >= 400


def test_every_word_list_is_used_by_a_template():
    folder = files("perfusion").joinpath("data", "corpus")
    packaged = {path.name.removesuffix(".txt") for path in folder.iterdir() if path.name.endswith(".txt")}
    used = template_slots() | {part for parts in SLOT_UNIONS.values() for part in parts}
    assert packaged - {"templates"} <= used
    assert all(word_list(slot) for slot in template_slots())  # every slot resolves to a non-empty list


def test_every_template_is_used(captions):
    # A template matches its captions once slots become wildcards and "a" may have become "an".
    def pattern(template):
        literal = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        return re.compile(re.sub(r"\ban?\b", "an?", SLOT.sub(".+", literal)) + "(, .+)?$")  # and phrases

    first_round = captions[: len(caption_templates())]  # templates are dealt in shuffled rounds
    for template in caption_templates():
        assert any(pattern(template).match(caption) for caption in first_round), template


def test_templated_caption_lengths_are_prompt_like():
    lengths = [len(caption.split()) for caption in default_captions(20000, prompt_share=0)]
    assert MIN_WORDS <= min(lengths) and max(lengths) <= MAX_WORDS
    # The bound holds for every seed: the longest words in every slot still fit.
    for template in caption_templates():
        words = len(SLOT.sub("", template).split())
        longest = sum(
            max(len(form.split()) for pair in word_list(slot) for form in pair) for slot, _ in SLOT.findall(template)
        )
        assert words + longest <= MAX_WORDS, template


def test_articles_agree_with_the_next_word():
    text = "\n".join(default_captions(20000, prompt_share=0))  # the phrases are quoted as users wrote them
    assert not re.search(r"\ba [aeio]", text)
    assert not re.search(r"\ban [^aeiou\W]", text)


def test_load_captions_strips_and_skips_blank_lines(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("  a cat on a sofa \n\n\t\na red car\n   \n")
    assert load_captions(path) == ["a cat on a sofa", "a red car"]
    assert load_captions(str(path)) == ["a cat on a sofa", "a red car"]


@pytest.mark.parametrize("content", [None, "", "\n \n\t\n"])
def test_load_captions_rejects_missing_or_empty_file(tmp_path, content):
    path = tmp_path / "captions.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_captions(path)


def test_phrases_are_single_clean_phrases():
    phrases = prompt_phrases()
    assert len(phrases) >= 20000 and len(set(phrases)) == len(phrases)
    assert all(re.fullmatch(r"[a-z][a-z0-9' \-]*[a-z0-9]", phrase) and len(phrase) <= 40 for phrase in phrases)


def test_a_model_folder_brings_its_own_corpus(tiny_pipeline_dir, tmp_path):
    assert model_captions(load_pipeline(tiny_pipeline_dir)) is None  # a folder without one: the packaged corpus
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / MODEL_CAPTIONS).write_text("a red cup\n\na blue ball on a table\n")
    assert model_captions(load_pipeline(folder)) == ["a red cup", "a blue ball on a table"]


@pytest.mark.parametrize("content", [b"", b"\n \n", b"\xff\xfe bad bytes\n"])
def test_an_unreadable_or_empty_model_corpus_is_one_line_naming_it(tiny_pipeline_dir, tmp_path, content):
    from perfusion.pipeline.models import ModelError

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / MODEL_CAPTIONS).write_bytes(content)
    with pytest.raises(ModelError, match=re.escape(str(folder / MODEL_CAPTIONS))):
        model_captions(load_pipeline(folder))
