"""The scene generator: determinism, catalog rules, captions that agree with the scene, example concepts."""

import random
import re

import numpy as np
import pytest
from PIL import Image

from perfusion.world import captions, catalog, example_concepts
from perfusion.world.captions import BACKGROUND_PHRASES, POSITION_PHRASES, SIZE_WORDS, describe
from perfusion.world.scenes import SceneSpec, make_scene, render, render_with_mask, sample_spec

SAMPLE = 300  # scenes per statistical check: enough to hit every template branch many times, under a second


def test_same_seed_same_scene():
    first, second = make_scene(1234), make_scene(1234)
    assert first.caption == second.caption and first.spec == second.spec
    assert first.image.tobytes() == second.image.tobytes()
    assert make_scene(1235).image.tobytes() != first.image.tobytes()


def test_scene_is_64px_rgb():
    image = make_scene(7).image
    assert image.size == (64, 64) and image.mode == "RGB"


def test_catalog_size_and_held_out_rules():
    assert len(catalog.CATEGORIES) >= 12 and len(catalog.OBJECTS) >= 40 and len(catalog.HELD_OUT) >= 3
    names = list(catalog.OBJECTS)
    assert len(set(names)) == len(names) and not set(names) & set(catalog.CATEGORIES)
    for name in catalog.HELD_OUT:
        category = catalog.OBJECTS[name].category
        assert len(catalog.members(category, include_held_out=False)) >= 3


def test_base_model_scenes_never_show_held_out_objects():
    held_out = set(catalog.HELD_OUT)
    for seed in range(SAMPLE):
        assert not set(make_scene(seed).spec.objects) & held_out
    with_held_out = {name for seed in range(2000) for name in make_scene(seed, include_held_out=True).spec.objects}
    assert held_out <= with_held_out


def test_every_caption_word_is_in_the_vocabulary():
    vocabulary = set(captions.vocabulary())
    for seed in range(SAMPLE):
        assert set(re.findall(r"[a-z]+", make_scene(seed, include_held_out=True).caption)) <= vocabulary


def _object_words(name):
    return {name, catalog.OBJECTS[name].category}


def test_captions_state_only_true_attributes():
    rng = random.Random(0)
    for _ in range(SAMPLE):
        spec = sample_spec(rng, include_held_out=True)
        caption = describe(spec, rng)
        text = caption.text
        assert any(word in text for word in _object_words(spec.object))
        if "background" in caption.stated:
            assert spec.background in text
            assert all(
                colour == spec.background or not re.search(rf"\b{colour}\b", text) for colour in catalog.BACKGROUNDS
            )
        if "size" in caption.stated:
            assert any(re.search(rf"\b{word}\b", text) for word in SIZE_WORDS[spec.size])
            other = next(size for size in catalog.SIZES if size != spec.size)
            assert not any(re.search(rf"\b{word}\b", text) for word in SIZE_WORDS[other])
        if spec.second_object is not None:
            assert "second_object" in caption.stated
            assert any(word in text for word in _object_words(spec.second_object))
        elif "position" in caption.stated:
            assert any(phrase in text for phrase in POSITION_PHRASES[spec.position])


def test_stated_side_of_a_pair_is_the_true_side():
    spec = SceneSpec("teacup", "red", "left", "small", second_object="penguin")  # the teacup stands on the left
    sides_stated = 0
    for seed in range(60):
        text = describe(spec, random.Random(seed)).text
        assert "to the right of" not in text
        if "to the left of" in text or "on the left and" in text:
            sides_stated += 1
            assert re.search(r"(teacup|cup) (to the left of|on the left and)", text)
    assert sides_stated > 0


def test_attributes_change_the_pixels_where_expected():
    spec = SceneSpec("tulip", "blue", "left", "large")
    pixels = np.asarray(render(spec), dtype=float)
    corner = pixels[60:, 60:].mean(axis=(0, 1))
    assert np.abs(corner - catalog.BACKGROUNDS["blue"]).max() < 20  # the object never reaches the far corner
    _, mask = render_with_mask(spec)
    columns = np.nonzero(np.asarray(mask).max(axis=0) > 128)[0]
    assert columns.mean() < 28  # "left": the object's mass sits left of the middle (32)
    _, small_mask = render_with_mask(SceneSpec("tulip", "blue", "left", "small"))
    assert (np.asarray(small_mask) > 128).sum() < 0.5 * (np.asarray(mask) > 128).sum()


def test_bad_specs_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="background"):
        SceneSpec("tulip", "mauve", "left", "large")
    with pytest.raises(ValueError, match="position"):
        SceneSpec("tulip", "red", "top", "large", second_object="rose")  # pairs stand side by side
    with pytest.raises(ValueError, match="object"):
        SceneSpec("unicorn", "red", "left", "large")


def test_background_phrases_use_the_right_article():
    spec = SceneSpec("owl", "orange", "centre", "small")
    texts = {describe(spec, random.Random(seed)).text for seed in range(100)}
    assert not any("a orange" in text or "a owl" in text for text in texts)
    assert any("an orange background" in text for text in texts) and len(BACKGROUND_PHRASES) > 1


def test_example_concepts_are_held_out_objects_with_photos_and_masks():
    from perfusion.world.examples import example_concept

    concepts = example_concepts()
    assert len(concepts) >= 3
    for concept in concepts:
        assert concept.object in catalog.HELD_OUT
        assert concept.supercategory == catalog.OBJECTS[concept.object].category
        paths = concept.image_paths()
        assert 4 <= len(paths) <= 6
        for path in paths:
            mask = np.asarray(Image.open(concept.mask_dir / path.name))
            assert mask.ndim == 2 and 0 < (mask > 128).mean() < 0.6
    assert example_concept("<mycat>").object == "black cat"
    with pytest.raises(KeyError, match="shipped"):
        example_concept("<nothing>")


def test_committed_glyphs_match_the_font():
    from perfusion.world.build_glyphs import DEFAULT_FONT, FONT_SIZE, render_emoji
    from perfusion.world.glyphs import glyph

    if not DEFAULT_FONT.exists():
        pytest.skip("Noto Color Emoji is not installed (Debian: fonts-noto-color-emoji)")
    from PIL import ImageFont

    font = ImageFont.truetype(str(DEFAULT_FONT), FONT_SIZE)
    for name in ("tulip", catalog.HELD_OUT[0]):
        fresh = np.asarray(render_emoji(font, catalog.OBJECTS[name].emoji), dtype=int)
        assert np.abs(fresh - np.asarray(glyph(name), dtype=int)).max() <= 1
