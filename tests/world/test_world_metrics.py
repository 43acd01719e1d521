"""Metrics: alignment bookkeeping (with an oracle standing in for the judge), CLIP-I/T on a tiny random CLIP, the
Pareto plot."""

import json
import string

import pytest
import torch
from PIL import Image

from perfusion.world.catalog import BACKGROUNDS
from perfusion.world.clip_metrics import ClipScorer
from perfusion.world.judge import JudgeOutput
from perfusion.world.judge_data import spec_labels
from perfusion.world.judge_model import HEAD_CLASSES
from perfusion.world.metrics import alignment_per_image
from perfusion.world.pareto import SweepPoint, pareto_front, pareto_plot
from perfusion.world.prompts import PromptSpec, standard_prompts
from perfusion.world.scenes import SceneSpec, make_scene


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
    assert alignment_per_image(oracle_output([pair]), PromptSpec("red", "right", None, "cup", "cat")) == [pytest.approx(2 / 3)]
    assert alignment_per_image(oracle_output([pair]), PromptSpec("red", None, None, "dog", "cat")) == [0.5]
    single = SceneSpec("cat face", "red", "left", "large")
    assert alignment_per_image(oracle_output([single]), PromptSpec("red", None, None, "teacup", "cat")) == [0.5]


def test_prompt_specs_render_and_refuse_bad_values():
    prompt = PromptSpec(background="orange", position="top", size="large", supercategory="cat")
    assert prompt.text("<mycat>") == "a photo of a large <mycat> at the top on an orange background"
    assert prompt.text("cat").endswith("on an orange background") and prompt.stated == ("background", "position", "size")
    with pytest.raises(ValueError, match="background"):
        PromptSpec(background="mauve")
    with pytest.raises(ValueError, match="supercategory"):
        PromptSpec(position="left", second_object="cup")
    with pytest.raises(ValueError, match="no attribute"):
        alignment_per_image(oracle_output([SceneSpec("owl", "red", "left", "large")]), PromptSpec())
    prompts = standard_prompts("cat", count=12)
    assert len(set(prompts)) == 12 and all(p.background in BACKGROUNDS for p in prompts)
    assert any(p.second_object for p in prompts) and prompts == standard_prompts("cat", count=12)


def write_tiny_clip(directory):
    """A random CLIP (a few thousand weights) with a character-level BPE tokenizer, saved like a real checkpoint."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase, *(f"{c}</w>" for c in string.ascii_lowercase)]
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = CLIPConfig(
        text_config={"vocab_size": len(tokens), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 1, "bos_token_id": 0},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_clip_metrics_on_a_tiny_random_clip(tmp_path):
    scorer = ClipScorer.load(write_tiny_clip(tmp_path))
    images = [make_scene(seed).image for seed in range(3)]
    assert scorer.clip_i(images[:1], images[:1]) == pytest.approx(1.0, abs=1e-5)  # an image matches itself
    assert scorer.clip_i(images, images) < 1.0
    score = scorer.clip_t(images, "a photo of a cat on a red background")
    assert -1.0 <= score <= 1.0 and score == scorer.clip_t(images, "a photo of a cat on a red background")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ClipScorer.load(tmp_path / "missing")


def test_pareto_plot_writes_a_png(tmp_path):
    points = [SweepPoint("perfusion", 0.9 - 0.1 * i, 0.5 + 0.1 * i, beta) for i, beta in enumerate((0.5, 0.6, 0.7))]
    points += [SweepPoint("textual inversion", 0.6, 0.55), SweepPoint("perfusion global", 0.85, 0.5, 0.5)]
    path = pareto_plot(points, tmp_path / "sweep.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100
    assert SweepPoint("textual inversion", 0.6, 0.55) not in pareto_front(points)
    with pytest.raises(ValueError, match="no sweep points"):
        pareto_plot([], tmp_path / "empty.png")
