"""SD 2.x: a tiny pipeline of its shape (v-prediction, "!" padding, linear projections in the transformer blocks, a
head size per resolution), and the concept file at SD 2.1 dimensions."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import Concept
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import load_concepts, unload_concepts
from perfusion.pipeline.text import content_mask, supercategory_substitution, tokenize
from perfusion.testing import SD21_UNET, handmade_concept, load_pipeline, small_corpus, write_concept_images
from perfusion.training.images import load_training_images
from perfusion.training.trainer import TrainingConfig, train_concept

CAPTIONS = small_corpus()
KB = 1000


@pytest.fixture
def sd2_pipe(sd2_dir):
    return load_pipeline(sd2_dir)


def pictures(pipe, prompt):
    config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, seed=0)
    return np.stack([np.asarray(image) for image in generate(pipe, prompt, config)])


def test_the_tiny_pipeline_has_sd2s_traits(sd2_pipe):
    assert sd2_pipe.tokenizer.pad_token == "!" and sd2_pipe.tokenizer.pad_token_id != sd2_pipe.tokenizer.eos_token_id
    assert sd2_pipe.scheduler.config.prediction_type == "v_prediction"
    assert sd2_pipe.unet.config.use_linear_projection and isinstance(sd2_pipe.unet.config.attention_head_dim, list)


def test_sd21_concept_file_is_sixteen_layers_and_under_100kb_and_halves(tmp_path):
    with torch.device("meta"):  # SD 2.1's UNet shapes, no memory
        unet = UNet2DConditionModel(cross_attention_dim=1024, **SD21_UNET)
    layers = cross_attention_modules(unet)
    generator = torch.Generator().manual_seed(0)

    def vector(width):
        return torch.randn(width, generator=generator)

    concept = Concept(
        "<mycat>",
        "cat",
        vector(1024),
        vector(1024),
        vector(1024),
        {name: vector(module.to_v.out_features) for name, module in layers.items()},
        "f" * 32,
    )
    assert len(layers) == 16 and sum(t.numel() for t in concept.value_targets.values()) == 12_480
    full = concept.save(tmp_path / "full.safetensors")
    half = concept.save(tmp_path / "half.safetensors", half=True)
    assert full.stat().st_size <= 100 * KB and half.stat().st_size <= 0.55 * full.stat().st_size


def test_padding_is_left_out_and_substituted_rows_pad_with_the_exclamation_mark(sd2_pipe):
    tokenizer = sd2_pipe.tokenizer
    ids = tokenize(tokenizer, ["a photo of a cat"])
    assert ids[0, -1].item() == tokenizer.pad_token_id  # "!" after the end-of-text token
    keep = content_mask(ids, tokenizer.eos_token_id)[0]
    assert keep.sum().item() == (ids[0] != tokenizer.pad_token_id).sum().item()  # up to and including the end
    cat = tokenizer.convert_tokens_to_ids("cat</w>")
    new_ids, _ = supercategory_substitution(
        ids, {cat: tokenizer("large red mug", add_special_tokens=False).input_ids}, tokenizer.eos_token_id
    )
    assert new_ids.shape == ids.shape and new_ids[0, -1].item() == tokenizer.pad_token_id


def test_prompts_without_the_concept_stay_stock_and_with_it_are_edited(sd2_pipe):
    stock, stock_cat = pictures(sd2_pipe, "a photo of a dog"), pictures(sd2_pipe, "a photo of a cat")
    load_concepts(sd2_pipe, handmade_concept(sd2_pipe), captions=CAPTIONS)
    assert np.array_equal(pictures(sd2_pipe, "a photo of a dog"), stock)
    assert not np.array_equal(pictures(sd2_pipe, "a photo of a <mycat>"), stock_cat)
    unload_concepts(sd2_pipe)
    assert np.array_equal(pictures(sd2_pipe, "a photo of a dog"), stock)


def test_training_lowers_the_loss_and_moves_only_v_star_and_value_targets(sd2_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    before = {
        f"{part}.{name}": tensor.clone()
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(sd2_pipe, part).state_dict().items()
    }
    config = TrainingConfig(steps=60, lr_embedding=1e-3, batch_size=2, gradient_accumulation=2, seed=0)
    result = train_concept(sd2_pipe, images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    assert result.held_out_loss[1] < result.held_out_loss[0], result.held_out_loss
    after = {
        f"{part}.{name}": tensor
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(sd2_pipe, part).state_dict().items()
    }
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loaded = Concept.load(result.concept.save(tmp_path / "disc.safetensors"))
    for name, tensor in result.concept.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
