"""The families world: instances, the reserved part, scenes, photos and captions."""

import random

import numpy as np
import pytest

from perfusion.world.families import captions, scenes
from perfusion.world.families.categories import CATEGORIES, CATEGORY_NAMES
from perfusion.world.families.examples import example_instances
from perfusion.world.families.instances import (
    EXAMPLE_EXCLUSION,
    RESERVED_SHARE,
    Instance,
    distance,
    evaluation_instance,
    excluded,
    sample_training_instance,
    seen_instances,
    stretch_instance,
)
from perfusion.world.families.palette import COLOURS, PATTERN_CONTRAST, colour_name, luminance, pattern_colour


def test_a_seed_gives_the_same_scene():
    first, second = captions.make_scene(123), captions.make_scene(123)
    assert first.caption == second.caption and first.spec == second.spec
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.image.size == (64, 64)


def test_the_reserved_part_is_about_a_tenth_of_the_cells():
    rng = random.Random(0)
    from perfusion.world.families.instances import _draw

    drawn = [_draw(rng.choice(CATEGORY_NAMES), rng) for _ in range(3000)]
    share = np.mean([instance.reserved for instance in drawn])
    assert abs(share - RESERVED_SHARE) < 0.025  # 3000 draws: binomial std 0.0055


@pytest.mark.parametrize("name", CATEGORY_NAMES)
def test_training_never_samples_reserved_instances_or_the_examples_neighbourhoods(name):
    rng = random.Random(1)
    for _ in range(200):
        instance = sample_training_instance(name, rng)
        assert not instance.reserved
        assert all(distance(instance, example) >= EXAMPLE_EXCLUSION for example in example_instances().values())
        assert instance.colour_name in CATEGORIES[name].colours and instance.pattern in CATEGORIES[name].patterns


def test_examples_and_evaluation_instances_are_reserved_and_seen_ones_are_not():
    for example in example_instances().values():
        assert example.reserved and excluded(example)
    for name in CATEGORY_NAMES:
        assert all(evaluation_instance(name, seed).reserved for seed in range(1000, 1012))
        assert all(not instance.reserved for instance in seen_instances(name))
        assert len(set(seen_instances(name))) == 3


@pytest.mark.parametrize("name", CATEGORY_NAMES)
def test_stretch_instances_leave_the_categorys_training_range(name):
    family = CATEGORIES[name]
    for seed in range(6):
        instance = stretch_instance(name, seed)
        assert instance.colour_name not in family.colours or instance.pattern not in family.patterns


def test_distance_is_zero_to_itself_and_counts_a_pattern_change():
    instance = sample_training_instance("cat", random.Random(2))
    other = Instance(**{**instance.__dict__, "pattern": "spots" if instance.pattern != "spots" else "stripes"})
    assert distance(instance, instance) == 0.0
    assert distance(instance, other) > 0.2  # one of 11 terms at 1: sqrt(1/11) = 0.30
    assert distance(instance, sample_training_instance("dog", random.Random(2))) == float("inf")


def test_an_instance_round_trips_through_its_dict():
    instance = evaluation_instance("teddy", 3)
    assert Instance.from_dict(instance.to_dict()) == instance


def test_photos_vary_the_scene_and_have_masks_on_the_object():
    shots = scenes.photos(example_instances()["mycat"], 5, seed=0)
    assert len({(spec.background, spec.position, spec.first.facing) for _, _, spec in shots}) > 1
    for image, mask, spec in shots:
        covered = np.asarray(mask) > 127
        assert spec.size in ("medium", "large")
        assert 0.04 < covered.mean() < 0.6  # a medium or large object covers a sizable share of 64x64


def test_a_pattern_changes_the_pixels_of_the_object_only():
    instance = evaluation_instance("mug", 5)
    spec = scenes.photos(instance, 1, seed=3)[0][2]
    plain = scenes.with_instance(spec, Instance(**{**instance.__dict__, "pattern": "plain"}))
    striped = scenes.with_instance(spec, Instance(**{**instance.__dict__, "pattern": "stripes", "pattern_scale": 0.0}))
    a, mask = scenes.render_with_mask(plain)
    b, _ = scenes.render_with_mask(striped)
    difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).sum(-1) > 30
    inside = np.asarray(mask) > 0
    assert difference[inside].mean() > 0.1  # the stripes show
    assert not difference[~inside].any()  # and nothing outside the object changes


def test_captions_name_the_category_or_a_family_word_and_only_true_coarse_attributes():
    rng = random.Random(4)
    for seed in range(300):
        spec = scenes.sample_spec(random.Random(seed))
        caption = captions.describe(spec, rng)
        words = caption.text.replace("-", " ").split()
        instance = spec.first.instance
        family_words = {word for word, inside in instance.family.family_words if inside(instance)}
        assert instance.category in words or family_words & set(words)
        if spec.second is None and "colour" in caption.stated:
            assert instance.colour_name in words
        assert set(words) <= set(captions.vocabulary())


def test_colour_words_are_stated_at_about_the_chosen_rate():
    rng = random.Random(5)
    stated = [
        ("colour" in captions.describe(scenes.sample_spec(random.Random(seed)), rng).stated) for seed in range(600)
    ]
    assert 0.38 < np.mean(stated) < 0.56  # 0.5 of non-bare captions (bare: 6% of one-object ones)


def test_every_object_mask_covers_the_second_object_too():
    spec = next(s for s in (scenes.sample_spec(random.Random(seed)) for seed in range(200)) if s.second is not None)
    _, first = scenes.render_with_mask(spec)
    _, both = scenes.render_with_mask(spec, every_object=True)
    first, both = np.asarray(first) > 0, np.asarray(both) > 0
    assert (both >= first).all() and both.sum() > first.sum()  # the union adds the second object's pixels


@pytest.mark.parametrize("name", sorted(CATEGORIES))
def test_every_extreme_shape_fits_on_the_sprite_canvas(name):
    """Shape values at every corner of the range, in every pose: nothing is cut off at the canvas's edge."""
    import itertools

    from perfusion.world.families.draw import CANVAS, draw
    from perfusion.world.families.instances import Instance

    family = CATEGORIES[name]
    for values in itertools.product((0.0, 1.0), repeat=len(family.shapes)):
        instance = Instance(name, values, (200, 120, 60), (40, 40, 40), "stripes", 1.0, None)
        for pose in family.poses:
            left, top, right, bottom = draw(instance, pose).getchannel("A").getbbox()
            assert left > 0 and top > 0 and right < CANVAS and bottom < CANVAS, (values, pose)


@pytest.mark.parametrize(
    ("body", "second"), [("brown", "gray"), ("gray", "teal"), ("red", "brown"), ("blue", "purple"), ("pink", "gray")]
)
def test_a_pattern_is_drawn_apart_from_its_body_without_changing_its_name(body, second):
    body_colour, second_colour = COLOURS[body], COLOURS[second]
    drawn = pattern_colour(body_colour, second_colour)
    assert colour_name(drawn) == second
    apart = abs(luminance(drawn) - luminance(body_colour)) >= PATTERN_CONTRAST - 1e-9
    # where the name allows no more, the pattern gets the most lightness contrast its name allows
    assert apart or abs(luminance(drawn) - luminance(body_colour)) > abs(
        luminance(second_colour) - luminance(body_colour)
    )


def test_a_pattern_whose_hue_stands_out_keeps_its_colour():
    assert pattern_colour(COLOURS["blue"], COLOURS["orange"]) == COLOURS["orange"]
    assert pattern_colour(COLOURS["white"], COLOURS["black"]) == COLOURS["black"]


def test_every_caption_fits_the_text_encoder_whole():
    # two-object captions with many attributes ran past the 32 tokens and lost their ending ("... background")
    from transformers import CLIPTokenizer

    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer")
    rng = random.Random(1)
    longest = max(len(tokenizer(captions.describe(scenes.sample_spec(rng), rng).text).input_ids) for _ in range(3000))
    assert longest <= tokenizer.model_max_length


def test_the_caption_token_count_is_the_tokenizers():
    from transformers import CLIPTokenizer

    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer")
    assert tokenizer.model_max_length == captions.MAX_TOKENS
    rng = random.Random(2)
    for _ in range(500):
        text = captions._describe_once(scenes.sample_spec(rng), rng, captions.CaptionChoice()).text
        assert captions.caption_tokens(text) == len(tokenizer(text).input_ids), text
