"""Regional composition: each concept denoised only in its own region (perfusion.composition.regions)."""

import numpy as np
import pytest
import torch

from perfusion.composition.regions import RegionsConfig, batch_indexed, region_masks
from perfusion.pipeline.attention import on_latent_grid
from perfusion.pipeline.generation import GenerationConfig, GenerationError, generate
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.settings import set_composition, set_global_lock
from perfusion.pipeline.text import encode, supercategory_substitution, tokenize
from perfusion.testing import handmade_concept, routed_entries, small_corpus

CAPTIONS = small_corpus()
PAIR = "a <mycat> next to a <mymug>"
OWN_PROMPTS = ["a <mycat> next to a mug", "a cat next to a <mymug>"]  # each concept's own row of PAIR


def two_concepts(pipe):
    load_concepts(pipe, handmade_concept(pipe, "<mycat>", "cat", seed=1), captions=CAPTIONS)
    load_concepts(pipe, handmade_concept(pipe, "<mymug>", "mug", seed=2))


def images(pipe, prompt, composition="joint", num_images=1, global_lock=False):
    config = GenerationConfig(
        num_inference_steps=3,
        guidance_scale=5.0,
        num_images_per_prompt=num_images,
        composition=composition,
        global_lock=global_lock,
    )
    return np.stack([np.asarray(image) for image in generate(pipe, prompt, config)])


def test_masks_give_each_cell_to_at_most_one_concept_and_only_above_the_threshold():
    maps = torch.zeros(2, 6, 6)
    maps[0, :, :3] = 1.0  # the first concept attends to the left, the second to the right, weaker
    maps[1, :, 3:] = 0.5
    maps[1, 0, 0] = 0.1  # a faint trace of the second concept on the left
    masks = region_masks(maps, threshold=0.3)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum(0).max() == 1
    assert masks[0, :, 0].all() and masks[1, :, 5].all()  # away from the border each side is its concept's
    assert not masks[1, :, :2].any() and not masks[0, :, 4:].any()
    assert not region_masks(torch.zeros(2, 6, 6).index_fill_(2, torch.tensor([0]), 1.0), 0.5)[:, :, 3:].any()


def test_regions_config_refuses_settings_outside_their_range():
    with pytest.raises(ValueError, match="layout"):
        RegionsConfig(layout=1.5)
    with pytest.raises(ValueError, match="threshold"):
        RegionsConfig(threshold=1.0)
    with pytest.raises(ValueError, match="min_concepts"):
        RegionsConfig(min_concepts=0)


def test_while_laying_out_the_split_row_is_exactly_the_plain_prompt(tiny_pipe):
    """With the whole schedule as layout, the two concepts' prompt draws what the supercategory words draw."""
    stock = images(tiny_pipe, "a cat next to a mug")
    two_concepts(tiny_pipe)
    set_composition(tiny_pipe, "regions", layout=1.0)
    split = routed_entries(tiny_pipe, [PAIR])[0].split
    with torch.no_grad():
        plain = encode(tiny_pipe.text_encoder, tokenize(tiny_pipe.tokenizer, ["a cat next to a mug"]))[0]
    torch.testing.assert_close(split.plain, plain)
    assert [row.tokens for row in split.rows] == [("<mycat>",), ("<mymug>",)]
    assert split.plain_positions == split.own_positions == [2, 6]  # after BOS: a, <mycat>; next, to, a, <mymug>

    config = GenerationConfig(
        num_inference_steps=3, guidance_scale=5.0, composition="regions", regions=dict(layout=1.0)
    )
    layout_only = np.asarray(generate(tiny_pipe, PAIR, config)[0])
    assert np.abs(layout_only.astype(int) - stock[0].astype(int)).max() <= 1


def test_after_the_layout_each_concept_row_predicts_inside_its_own_region(tiny_pipe):
    """The merged prediction is (1 - sum_j m_j) plain + sum_j m_j own_j, with each row run on its own."""
    two_concepts(tiny_pipe)
    set_composition(tiny_pipe, "regions", layout=0.0, threshold=0.3)
    runtime = find_runtime(tiny_pipe)
    ids = tokenize(tiny_pipe.tokenizer, ["", PAIR])
    with torch.no_grad():
        states = encode(tiny_pipe.text_encoder, ids)
    size = tiny_pipe.unet.config.sample_size
    sample = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor(500)
    with torch.no_grad():
        merged = tiny_pipe.unet(sample, timestep, encoder_hidden_states=states).sample
        maps = runtime.regional.maps[1].clone()
        split = routed_entries(tiny_pipe, [PAIR])[0].split
        set_composition(tiny_pipe, "joint")
        routed_entries(tiny_pipe, OWN_PROMPTS)  # each concept's own row, edited as any prompt with that concept
        plain = tiny_pipe.unet(sample[1:], timestep, encoder_hidden_states=split.plain[None]).sample[0]
        own = [
            tiny_pipe.unet(sample[1:], timestep, encoder_hidden_states=row.encodings[None]).sample[0]
            for row in split.rows
        ]
        stock_negative = tiny_pipe.unet(sample[:1], timestep, encoder_hidden_states=states[:1]).sample[0]
    assert merged.shape == sample.shape
    assert maps.shape == (2, size, size) and (maps.sum((1, 2)) > 0).all()
    masks = region_masks(maps, 0.3)[:, None]
    assert masks.sum(0).max() == 1 and (masks.sum((1, 2, 3)) > 0).all()
    expected = (1 - masks.sum(0)) * plain + masks[0] * own[0] + masks[1] * own[1]
    torch.testing.assert_close(merged[1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged[0], stock_negative, atol=1e-5, rtol=1e-4)


def test_a_prompt_with_one_concept_keeps_the_joint_edit(tiny_pipe):
    two_concepts(tiny_pipe)
    joint = images(tiny_pipe, "a photo of a <mycat>")
    assert np.array_equal(images(tiny_pipe, "a photo of a <mycat>", composition="regions"), joint)
    pair = images(tiny_pipe, PAIR, num_images=2)
    regional = images(tiny_pipe, PAIR, composition="regions", num_images=2)
    assert regional.shape == pair.shape and not np.array_equal(regional, pair)


def test_regions_under_global_key_locking_lock_each_concept_row_to_the_supercategory(tiny_pipe):
    two_concepts(tiny_pipe)
    set_composition(tiny_pipe, "regions")
    set_global_lock(tiny_pipe, True)
    with torch.no_grad():
        plain = encode(tiny_pipe.text_encoder, tokenize(tiny_pipe.tokenizer, ["a cat next to a mug"]))[0]
    for row in routed_entries(tiny_pipe, [PAIR])[0].split.rows:
        torch.testing.assert_close(row.key_encodings, plain)  # every concept read as its supercategory
    locked = images(tiny_pipe, PAIR, composition="regions", global_lock=True)
    assert not np.array_equal(locked, images(tiny_pipe, PAIR, composition="regions"))


@pytest.mark.parametrize("tail", ["", " on a red sofa" * 20])  # the second fills the tokenizer's 77 positions
def test_split_rows_locked_keys_are_the_plain_rows_gathered_as_encoding_them_would_give(tiny_pipe, tail):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe, "<mycat>", "small cat", seed=1), captions=CAPTIONS)
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe, "<mymug>", "large red mug", seed=2))
    runtime = find_runtime(tiny_pipe)
    ids = tokenize(tiny_pipe.tokenizer, [PAIR + tail])
    replacements = runtime.supercategory_replacements()
    eos = tiny_pipe.tokenizer.eos_token_id
    others = [{key: value for key, value in replacements.items() if key != own} for own in replacements]
    own_ids = [supercategory_substitution(ids, variant, eos)[0] for variant in others]
    set_global_lock(tiny_pipe, True)
    set_composition(tiny_pipe, "regions")
    split = routed_entries(tiny_pipe, [ids])[0].split  # its own rows' keys: the plain row's, gathered
    set_composition(tiny_pipe, "joint")
    for row, own in zip(split.rows, own_ids):  # each own row routed alone: its keys re-encoded
        torch.testing.assert_close(row.key_encodings, routed_entries(tiny_pipe, [own])[0].key_encodings)


def test_maps_add_up_along_a_trajectory_and_start_again_when_the_timestep_rises(tiny_pipe):
    two_concepts(tiny_pipe)
    set_composition(tiny_pipe, "regions")
    runtime = find_runtime(tiny_pipe)
    ids = tokenize(tiny_pipe.tokenizer, [PAIR])
    size = tiny_pipe.unet.config.sample_size
    sample = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = encode(tiny_pipe.text_encoder, ids)

        def total(timestep):
            tiny_pipe.unet(sample, torch.tensor(timestep), encoder_hidden_states=states)
            return runtime.regional.maps[0].sum().item()

        first = total(999)
        assert total(500) > first  # the same trajectory: the maps add up
        assert total(999) == pytest.approx(first)  # noisier again: a new trajectory


def test_regions_run_in_half_precision(tiny_pipeline_dir):
    from perfusion.testing import load_pipeline

    half = load_pipeline(tiny_pipeline_dir).to(torch.float16)
    two_concepts(half)
    picture = images(half, PAIR, composition="regions")
    assert picture.shape == (1, 16, 16, 3) and picture.std() > 0


def test_generate_keeps_the_pipelines_composition_unless_its_config_sets_one(tiny_pipe):
    two_concepts(tiny_pipe)
    regional = images(tiny_pipe, PAIR, composition="regions")
    joint = images(tiny_pipe, PAIR, composition="joint")
    set_composition(tiny_pipe, "regions")
    kept = generate(
        tiny_pipe, PAIR, GenerationConfig(num_inference_steps=3, guidance_scale=5.0)
    )  # no composition given
    assert np.array_equal(np.asarray(kept[0]), regional[0])
    assert np.array_equal(images(tiny_pipe, PAIR, composition="joint"), joint)


def test_an_unknown_composition_mode_is_refused(tiny_pipe):
    two_concepts(tiny_pipe)
    with pytest.raises(ValueError, match="composition"):
        set_composition(tiny_pipe, "blend")
    with pytest.raises(GenerationError, match="composition"):
        images(tiny_pipe, PAIR, composition="blend")
    with pytest.raises(GenerationError, match="regions settings"):
        generate(tiny_pipe, PAIR, GenerationConfig(num_inference_steps=1, regions=dict(layout=0.5)))


@pytest.mark.parametrize(
    "latent, layer", [((90, 160), (12, 20)), ((65, 88), (9, 11)), ((64, 64), (8, 8)), ((7, 5), (7, 5))]
)
def test_a_layers_map_is_read_on_its_own_grid_when_the_sides_do_not_halve_evenly(latent, layer):
    """Stride-2 downsampling rounds each side up (SD 1.5 at 720x1280: a 90x160 latent, 12x20 at the deepest layer)."""
    values = torch.arange(float(layer[0] * layer[1]))
    grid = on_latent_grid(values[None], *latent)
    assert grid.shape == (1, 1, *latent)
    assert grid[0, 0, 0, 0] == values[0] and grid[0, 0, -1, -1] == values[-1]  # the corners, not a sheared copy
    assert grid[0, 0, -1, 0] == values[(layer[0] - 1) * layer[1]]


def test_the_unets_arguments_are_re_indexed_inside_lists_and_tuples_too():
    """IP-Adapter's image embeddings are a list in added_cond_kwargs, ControlNet's residuals a tuple: each row follows
    the split rows, or the UNet call fails on mismatched batch sizes."""
    rows = torch.arange(2.0)[:, None]
    index = torch.tensor([0, 1, 1, 1])
    given = {
        "added_cond_kwargs": {"image_embeds": [rows]},
        "down_block_additional_residuals": (rows, rows * 2),
        "scale": 1.0,
    }
    expanded = batch_indexed(given, 2, index)
    assert torch.equal(expanded["added_cond_kwargs"]["image_embeds"][0], rows[index])
    assert isinstance(expanded["down_block_additional_residuals"], tuple)
    assert torch.equal(expanded["down_block_additional_residuals"][1], rows[index] * 2) and expanded["scale"] == 1.0
