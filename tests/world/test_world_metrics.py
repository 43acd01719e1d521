"""Metrics: alignment bookkeeping (with an oracle standing in for the judge). CLIP-I/T and the Pareto plot are
tested in tests/experiments/test_clip_and_pareto.py."""

import pytest
import torch

from perfusion.world.catalog import BACKGROUNDS
from perfusion.world.judge import JudgeOutput
from perfusion.world.judge_data import spec_labels
from perfusion.world.judge_model import HEAD_CLASSES
from perfusion.world.metrics import alignment_per_image
from perfusion.world.prompts import PromptSpec, standard_prompts
from perfusion.world.scenes import SceneSpec


def oracle_output(specs):
    """What a perfect judge would output for these scenes: one-hot probabilities from the true labels."""
    probabilities = {name: torch.full((len(specs), len(classes)), 1e-3) for name, classes in HEAD_CLASSES.items()}
    for row, spec in enumerate(specs):
        for name, index in spec_labels(spec).items():
            probabilities[name][row, max(index, 0)] = 1.0
    return JudgeOutput(probabilities, torch.nn.functional.normalize(torch.randn(len(specs), 8), dim=-1))


def test_alignment_is_one_when_every_stated_attribute_holds():
    spec = SceneSpec("cat face", "red", "left", "small")
    prompt = PromptSpec(background="red", position="left", size="small", supercategory="cat")
    assert alignment_per_image(oracle_output([spec]), prompt) == [1.0]


def test_alignment_counts_the_share_of_attributes_found():
    wrong_background = SceneSpec("cat face", "blue", "left", "small")
    prompt = PromptSpec(background="red", position="left", size="small", supercategory="cat")
    assert alignment_per_image(oracle_output([wrong_background]), prompt) == [pytest.approx(2 / 3)]


def test_two_object_alignment_checks_sides_and_categories():
    pair = SceneSpec("cat face", "red", "left", "large", second_object="teacup")
    assert alignment_per_image(oracle_output([pair]), PromptSpec("red", "left", None, "cup", "cat")) == [1.0]
    assert alignment_per_image(oracle_output([pair]), PromptSpec("red", "right", None, "cup", "cat")) == [
        pytest.approx(2 / 3)
    ]
    assert alignment_per_image(oracle_output([pair]), PromptSpec("red", None, None, "dog", "cat")) == [0.5]
    single = SceneSpec("cat face", "red", "left", "large")
    assert alignment_per_image(oracle_output([single]), PromptSpec("red", None, None, "teacup", "cat")) == [0.5]


def test_prompt_specs_render_and_refuse_bad_values():
    prompt = PromptSpec(background="orange", position="top", size="large", supercategory="cat")
    assert prompt.text("<mycat>") == "a photo of a large <mycat> at the top on an orange background"
    assert prompt.text("cat").endswith("on an orange background") and prompt.stated == (
        "background",
        "position",
        "size",
    )
    with pytest.raises(ValueError, match="background"):
        PromptSpec(background="mauve")
    with pytest.raises(ValueError, match="supercategory"):
        PromptSpec(position="left", second_object="cup")
    with pytest.raises(ValueError, match="no attribute"):
        alignment_per_image(oracle_output([SceneSpec("owl", "red", "left", "large")]), PromptSpec())
    prompts = standard_prompts("cat", count=12)
    assert len(set(prompts)) == 12 and all(p.background in BACKGROUNDS for p in prompts)
    assert any(p.second_object for p in prompts) and prompts == standard_prompts("cat", count=12)
