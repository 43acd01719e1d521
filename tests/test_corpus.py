import re
from importlib.resources import files

import pytest

from perfusion.pipeline.corpus import SLOT_UNIONS, caption_templates, default_captions, load_captions, word_list

SLOT = re.compile(r"\{(\w+)(:s)?\}")
MIN_WORDS, MAX_WORDS = 3, 30  # typical prompt lengths, well inside CLIP's 77 tokens


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
    assert len(set(captions)) >= 5000


def test_many_templates_and_several_hundred_words():
    assert len(caption_templates()) >= 60
    slot_files = {slot for slot in template_slots() if slot not in SLOT_UNIONS}
    slot_files |= {part for slot in template_slots() & SLOT_UNIONS.keys() for part in SLOT_UNIONS[slot]}
    assert sum(len(word_list(slot)) for slot in slot_files) >= 400


def test_every_word_list_is_used_by_a_template():
    packaged = {path.name.removesuffix(".txt") for path in files("perfusion").joinpath("data", "corpus").iterdir()}
    used = template_slots() | {part for parts in SLOT_UNIONS.values() for part in parts}
    assert packaged - {"templates"} <= used
    assert all(word_list(slot) for slot in template_slots())  # every slot resolves to a non-empty list


def test_every_template_is_used(captions):
    # A template matches its captions once slots become wildcards and "a" may have become "an".
    def pattern(template):
        literal = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        return re.compile(re.sub(r"\ban?\b", "an?", SLOT.sub(".+", literal)) + "$")

    first_round = captions[: len(caption_templates())]  # templates are dealt in shuffled rounds
    for template in caption_templates():
        assert any(pattern(template).match(caption) for caption in first_round), template


def test_caption_lengths_are_prompt_like(captions):
    lengths = [len(caption.split()) for caption in captions]
    assert MIN_WORDS <= min(lengths) and max(lengths) <= MAX_WORDS
    # The bound holds for every seed: the longest words in every slot still fit.
    for template in caption_templates():
        words = len(SLOT.sub("", template).split())
        longest = sum(
            max(len(form.split()) for pair in word_list(slot) for form in pair) for slot, _ in SLOT.findall(template)
        )
        assert words + longest <= MAX_WORDS, template


def test_articles_agree_with_the_next_word(captions):
    text = "\n".join(captions)
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
