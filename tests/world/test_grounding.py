"""Token grounding of the base model's training: which tokens are grounded, on which box, and the loss."""

import dataclasses
import random
import shutil

import pytest
import torch
from transformers import CLIPTokenizer

from perfusion.world.basemodel import model as models
from perfusion.world.basemodel import train_base as train
from perfusion.world.basemodel.config import UnetTrainingConfig
from perfusion.world.basemodel.data import world_source
from perfusion.world.basemodel.grounding import (
    POSITION_WORDS,
    AttentionRecorder,
    CaptionGrounding,
    GroundingTargets,
    box_coverage,
    token_grounding_loss,
    token_pixel_loss,
    word_objects,
)
from perfusion.world.catalog import world_object
from perfusion.world.model_path import MODEL_DIR
from perfusion.world.scenes import SceneSpec

ONE = SceneSpec(object="lovestruck cat", background="red", position="left", size="small")
PAIR = SceneSpec(object="teacup", background="red", position="right", size="small", second_object="coffee cup")


@pytest.fixture(scope="module")
def tokenizer():
    if not (MODEL_DIR / "tokenizer").exists():
        pytest.skip("the embedded model's tokenizer is not shipped")
    return CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer")


def test_object_names_come_before_their_category_words():
    words = "a lovestruck cat on the left or a cat".split()
    assert word_objects(ONE, words) == [None, 0, 0, None, None, 0, None, None, 0]


def test_a_category_shared_by_both_objects_is_not_grounded():
    words = "a cup on the left and a cup on the right".split()
    assert word_objects(PAIR, words) == [None, None, None, None, 1, None, None, None, None, None, 0]


def test_pair_side_words_are_grounded_only_where_each_names_one_object():
    assert word_objects(PAIR, "a coffee cup on the left and a teacup on the right".split()) == [
        None,
        1,
        1,
        None,
        None,
        1,
        None,
        None,
        0,
        None,
        None,
        0,
    ]
    assert word_objects(PAIR, "a teacup to the right of a coffee cup".split()) == [
        None,
        0,
        None,
        None,
        None,
        None,
        None,
        1,
        1,
    ]


def test_grounded_tokens_are_the_named_words_tokens(tokenizer):
    source, rng = world_source(), random.Random(0)
    grounding = CaptionGrounding(tokenizer)
    for seed in range(200):
        spec = source.make_scene(seed).spec
        caption = source.caption(spec, rng)
        ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        for token, owner in grounding.token_objects(spec, caption):
            piece = tokenizer.convert_ids_to_tokens(ids[token]).removesuffix("</w>")
            name = spec.objects[owner]
            allowed = [*name.split(), world_object(name).category, *POSITION_WORDS]
            assert any(piece in word for word in allowed), (caption, piece)


def test_box_coverage_is_the_share_of_each_cell_inside_the_box():
    coverage = box_coverage(16.0, 16.0, 16.0, resolution=4)  # a 16 px square centred on a cell corner
    assert coverage.sum() == pytest.approx(1.0)  # one cell's area, spread over four
    assert coverage[0:2, 0:2].flatten().tolist() == pytest.approx([0.25] * 4)
    assert box_coverage(0.0, 32.0, 16.0, resolution=4).sum() == pytest.approx(0.5)  # half of it off the image


def test_recording_processor_keeps_the_unet_output_and_records_normalised_maps(tiny_architecture):
    torch.manual_seed(0)
    unet = models.build_unet(tiny_architecture).eval()
    latents, encoding = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    with torch.no_grad():
        reference = unet(latents, 10, encoding).sample
        recorder = AttentionRecorder(unet)
        with recorder.recording():
            recorded = unet(latents, 10, encoding).sample
        unrecorded = unet(latents, 10, encoding).sample
    torch.testing.assert_close(recorded, reference, rtol=1e-4, atol=1e-5)  # SDPA against explicit softmax
    assert torch.equal(recorded, unrecorded)
    assert sorted(m.shape[1] for m in recorder.maps) == [16, 64, 64, 64, 256, 256, 256]
    assert all(m.shape[::2] == (2, 7) and torch.allclose(m.sum(-1), torch.ones(())) for m in recorder.maps)
    assert all(
        isinstance(p, type(unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"]))
        for name, p in unet.attn_processors.items()
        if "attn1" in name
    )


def test_loss_is_zero_inside_the_box_and_the_outside_share_squared_for_a_uniform_map():
    mask = box_coverage(16.0, 16.0, 32.0, resolution=4).flatten()  # the top-left quarter
    targets = GroundingTargets(torch.tensor([0]), torch.tensor([1]), {4: mask[None]})
    inside = torch.zeros(1, 16, 3)
    inside[0, :, 1] = mask
    assert token_grounding_loss([inside], targets) == pytest.approx(0.0)
    assert token_grounding_loss([torch.full((1, 16, 3), 1 / 3)], targets) == pytest.approx(0.75**2)


def test_pixel_loss_asks_the_token_to_hold_its_boxs_attention():
    mask = box_coverage(16.0, 16.0, 32.0, resolution=4).flatten()
    targets = GroundingTargets(torch.tensor([0]), torch.tensor([1]), {4: mask[None]})
    shaped_but_faint = torch.full((1, 16, 3), 0.45)
    shaped_but_faint[0, :, 1] = 0.1 * mask  # all of the token's map on the box, a tenth of each cell's attention
    holding = torch.full((1, 16, 3), 0.05)
    holding[0, :, 1] = 0.9 * mask
    assert token_grounding_loss([shaped_but_faint], targets) == pytest.approx(0.0)  # L_token cannot tell them apart
    assert token_pixel_loss([holding], targets) < 0.3 * token_pixel_loss([shaped_but_faint], targets)


@pytest.mark.parametrize("term", ["grounding", "pixel"])
def test_training_step_with_grounding_moves_the_named_tokens_attention_to_their_boxes(
    tmp_path, term, tiny_architecture
):
    if not (MODEL_DIR / "tokenizer").exists():
        pytest.skip("the embedded model's tokenizer is not shipped")
    shutil.copytree(MODEL_DIR / "tokenizer", tmp_path / "tokenizer")
    torch.manual_seed(0)
    weights = {
        "grounding_weight": 1.0 if term == "grounding" else 0.0,
        "grounding_pixel_weight": 1.0 if term == "pixel" else 0.0,
    }
    config = UnetTrainingConfig(
        batch_size=4, unet_learning_rate=1e-2, text_learning_rate=1e-2, warmup_steps=0, **weights
    )
    trainer = train.UnetTrainer(tmp_path, world_source(), tiny_architecture, config, print)
    specs = [dataclasses.replace(ONE, position=p) for p in ("left", "right", "top", "bottom")]
    captions = [f"a lovestruck cat {p}" for p in ("on the left", "on the right", "at the top", "at the bottom")]
    latents = torch.randn(4, 4, 16, 16)
    first = trainer.training_step(latents, captions, specs)
    for _ in range(15):
        last = trainer.training_step(latents, captions, specs)
    assert set(first) == {"loss", "grounding", "pixel"}  # both are logged whichever is trained
    assert last[term] < 0.8 * first[term]


def test_layout_reads_the_grounded_tokens_attention_and_restores_the_processors():
    from diffusers import StableDiffusionPipeline

    from perfusion.world.basemodel import layout

    if not (MODEL_DIR / "model_index.json").exists():
        pytest.skip("the embedded model is not shipped")
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, local_files_only=True)
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    shares = layout.attention_on_box(pipe, "teacup", noise)
    assert set(shares) == {"left", "right"}
    assert all(
        0 <= share <= 1 and 0 < even < 0.2 and 0 <= held <= 1 for share, even, held in shares.values()
    )  # small box
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before


def test_the_pixel_term_can_be_kept_to_the_words_that_name_each_object():
    from perfusion.world.families import scenes
    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer")
    spec = scenes.sample_spec(random.Random(1))
    first, second = spec.instances
    caption = f"a white striped {first.category} with black spots next to a tall {second.category} on the left"
    targets = CaptionGrounding(tokenizer).targets([spec], [caption], (16,))
    ids = tokenizer(caption).input_ids
    words = [tokenizer.convert_ids_to_tokens(ids[i]).removesuffix("</w>") for i in targets.indices.tolist()]
    nouns = [tokenizer.convert_ids_to_tokens(ids[i]).removesuffix("</w>") for i in targets.only_nouns().indices]
    assert {"white", "striped", "black", "spots", "tall"} <= set(words)
    assert nouns == [first.category, second.category]
    assert targets.only_nouns().masks[16].shape == (2, 256)


def test_an_unknown_choice_of_pixel_grounded_tokens_is_refused():
    with pytest.raises(ValueError, match="grounding_pixel_tokens"):
        UnetTrainingConfig(grounding_pixel_tokens="adjectives")


def test_together_an_objects_words_may_split_its_boxs_attention_as_they_like():
    mask = box_coverage(16.0, 16.0, 32.0, resolution=4).flatten()  # the top-left quarter
    targets = GroundingTargets(
        torch.tensor([0, 0]), torch.tensor([1, 2]), {4: torch.stack([mask, mask])}, objects=torch.tensor([0, 0])
    )
    split = torch.full((1, 16, 4), 0.05)
    split[0, :, 1], split[0, :, 2] = 0.05 + 0.8 * mask, 0.05 + 0.05 * mask  # most of the box's attention on word 1
    even = torch.full((1, 16, 4), 0.05)
    even[0, :, 1] = even[0, :, 2] = 0.05 + 0.425 * mask
    apart = float(token_pixel_loss([split], targets)), float(token_pixel_loss([even], targets))
    joint = [float(token_pixel_loss([m], targets, together=True)) for m in (split, even)]
    assert joint[0] == pytest.approx(joint[1], rel=0.05)  # the split is free
    assert apart[0] > 1.2 * apart[1]  # token by token, the uneven split costs more
    assert joint[0] < apart[0]


def test_together_keeps_each_objects_tokens_apart_from_the_others():
    from perfusion.world.families import scenes
    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer")
    spec = scenes.sample_spec(random.Random(1))
    first, second = spec.instances
    captions = [f"a white {first.category} next to a tall {second.category}", f"a black {first.category}"]
    targets = CaptionGrounding(tokenizer).targets([spec, spec], captions, (16,))
    assert targets.objects.tolist() == [0, 0, 1, 1, 2, 2]
    assert targets.only_nouns().objects.tolist() == [0, 1, 2]
