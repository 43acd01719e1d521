"""CLIP-I/T on a tiny random CLIP, and the Pareto plot of a sweep."""

import json
import string

import pytest
import torch
from PIL import Image

from perfusion.experiments.clip_metrics import ClipScorer
from perfusion.experiments.pareto import SweepPoint, pareto_front, pareto_plot
from perfusion.world.scenes import make_scene


def write_tiny_clip(directory):
    """A random CLIP (a few thousand weights) with a character-level BPE tokenizer, saved like a real checkpoint."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    tokens = [
        "<|startoftext|>",
        "<|endoftext|>",
        *string.ascii_lowercase,
        *(f"{c}</w>" for c in string.ascii_lowercase),
    ]
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": 1,
            "bos_token_id": 0,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=8,
    )
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
