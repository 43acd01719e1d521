"""Negatives keep an object's colours and place but not its shape, and are labelled as no recognisable object."""

import random

import numpy as np
import pytest

from perfusion.world.glyphs import scaled_glyph
from perfusion.world.judge_data import draw_negatives, labelled_batch, specs_from_seeds
from perfusion.world.judge_model import NOTHING, OBJECT_CLASSES
from perfusion.world.negatives import KINDS, negative_sprite


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_keeps_the_size_and_changes_the_pixels(kind):
    sprite = scaled_glyph("black cat", 60, False)
    negative = negative_sprite(sprite, kind, random.Random(0))
    assert negative.size == sprite.size and negative.mode == "RGBA"
    before, after = np.asarray(sprite, dtype=np.int16), np.asarray(negative, dtype=np.int16)
    # Measured: every kind changes at least a fifth of the pixels by more than 32 levels in some channel.
    assert (np.abs(before - after).max(-1) > 32).mean() > 0.2
    assert (after[..., 3] > 128).any()  # something is drawn


def test_negatives_are_labelled_nothing_and_not_present():
    specs = specs_from_seeds(range(40))
    negatives = draw_negatives(specs, 1.0, seed=3)
    _, targets = labelled_batch(specs, negatives, seed=3)
    nothing = OBJECT_CLASSES.index(NOTHING)
    for row, (spec, kinds) in enumerate(zip(specs, negatives)):
        assert any(kinds)
        if spec.second_object is None:
            assert targets["object"][row] == nothing and targets["present"][row].sum() == 0
        else:
            assert targets["present"][row].sum() == sum(kind is None for kind in kinds)


def test_no_negatives_by_default_and_the_same_seed_draws_the_same():
    specs = specs_from_seeds(range(20))
    assert draw_negatives(specs, 0.0, seed=1) == [()] * 20
    assert draw_negatives(specs, 0.5, seed=1) == draw_negatives(specs, 0.5, seed=1)
    first, _ = labelled_batch(specs, draw_negatives(specs, 1.0, seed=2), seed=2)
    second, _ = labelled_batch(specs, draw_negatives(specs, 1.0, seed=2), seed=2)
    assert (first == second).all()
