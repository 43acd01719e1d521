"""SDXL: every property the SD 1.x suite checks, on a tiny StableDiffusionXLPipeline (two text encoders of different
widths, the second with projection; a text-and-time added condition; cross-attention at two resolutions, transformer
depth 2), and the concept file at SDXL base dimensions."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from perfusion.cli import main
from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import Concept, ConceptFileError
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.covariance import estimate_covariance
from perfusion.pipeline.generation import GenerationConfig, GenerationError, generate
from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.pipeline.models import UnsupportedPipelineError
from perfusion.pipeline.plans import linear_part
from perfusion.pipeline.settings import set_composition, set_global_lock
from perfusion.pipeline.text import content_mask, tokenize
from perfusion.testing import (
    SDXL_TEXT,
    SDXL_TEXT_2,
    SDXL_UNET,
    TINY_SDXL_WIDTHS,
    handmade_concept,
    load_pipeline,
    routed_entries,
    small_corpus,
    write_concept_images,
)
from perfusion.training.images import load_training_images
from perfusion.training.trainer import ConceptTrainer, TrainingConfig, train_concept

CAPTIONS = small_corpus()
KB = 1000
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture
def sdxl_pipe(sdxl_dir):
    return load_pipeline(sdxl_dir)


@pytest.fixture
def cat_pipe(sdxl_pipe):
    load_concepts(sdxl_pipe, handmade_concept(sdxl_pipe), captions=CAPTIONS)
    return sdxl_pipe


def pictures(pipe, prompt, **kwargs):
    config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, seed=0, **kwargs)
    return np.stack([np.asarray(image) for image in generate(pipe, prompt, config)])


def penultimate(pipe, prompt, tower=None, layer=-2):
    """What StableDiffusionXLPipeline.encode_prompt hands the UNet: both encoders' hidden_states[layer], concatenated
    (or one encoder's part)."""
    text = TextConditioning.of(pipe)
    parts = []
    with torch.no_grad():
        for tower_ in text.towers if tower is None else [text.towers[tower]]:
            ids = tokenize(tower_.tokenizer, [prompt])
            parts.append(tower_.text_encoder(ids, output_hidden_states=True).hidden_states[layer])
    return torch.cat(parts, -1)[0]


def base_weights(pipe):
    return {
        f"{part}.{name}": tensor.clone() for part in PARTS for name, tensor in getattr(pipe, part).state_dict().items()
    }


def test_the_tiny_pipeline_has_sdxls_traits(sdxl_pipe):
    assert type(sdxl_pipe).__name__ == "StableDiffusionXLPipeline"
    assert isinstance(sdxl_pipe.text_encoder_2, CLIPTextModelWithProjection) and sdxl_pipe.tokenizer_2.pad_token == "!"
    config = sdxl_pipe.unet.config
    assert config.addition_embed_type == "text_time" and config.cross_attention_dim == sum(TINY_SDXL_WIDTHS)
    assert max(config.transformer_layers_per_block) > 1
    widths = {module.to_v.out_features for module in cross_attention_modules(sdxl_pipe.unet).values()}
    assert len(widths) == 2  # cross-attention at two resolutions
    # As SDXL base's published text encoder configs: the legacy end-of-text id 2, so CLIP pools at the largest id.
    assert sdxl_pipe.text_encoder.config.eos_token_id == sdxl_pipe.text_encoder_2.config.eos_token_id == 2


def end_of_text_pooled(pipe, prompt):
    """text_encoder_2's projected output read at the first end-of-text token (what CLIP means to pool)."""
    ids = pipe.tokenizer_2(
        prompt, padding="max_length", max_length=pipe.tokenizer_2.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        states = pipe.text_encoder_2(ids, output_hidden_states=True).last_hidden_state
    position = int((ids[0] == pipe.tokenizer_2.eos_token_id).nonzero()[0])
    return pipe.text_encoder_2.text_projection(states[0, position])


@pytest.mark.parametrize("prompt", ["<mycat> sleeping on a sofa", "a photo of a <mycat>"])
def test_the_pooled_embedding_of_a_concept_prompt_is_read_at_the_end_of_text(cat_pipe, prompt):
    """Concept tokens sit above end-of-text: under the legacy id CLIP pooled at the concept token (issue 33)."""
    with torch.no_grad():
        *_, pooled, _ = cat_pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    assert torch.allclose(pooled[0], end_of_text_pooled(cat_pipe, prompt), atol=1e-5)


def test_the_pooled_embedding_of_a_row_without_concepts_is_unchanged(sdxl_pipe):
    prompt = "a photo of a cat sleeping on a sofa"
    with torch.no_grad():
        *_, stock, _ = sdxl_pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        load_concepts(sdxl_pipe, handmade_concept(sdxl_pipe), captions=CAPTIONS)
        *_, loaded, _ = sdxl_pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    assert torch.equal(stock, loaded)


def test_training_pools_the_concept_caption_at_the_end_of_text(cat_pipe):
    text = TextConditioning.of(cat_pipe)
    ids = text.tokenize(["a photo of a <mycat>"])
    with torch.no_grad():
        _, pooled = text.encode_with_pooled(ids)
    assert torch.allclose(pooled[0], end_of_text_pooled(cat_pipe, "a photo of a <mycat>"), atol=1e-5)


def test_the_edit_reads_the_pipelines_own_concatenated_penultimate_layers(sdxl_pipe):
    """e as encode_prompt builds it: the two text encoders' hidden_states[-2], side by side (16 + 24 wide here)."""
    text = TextConditioning.of(sdxl_pipe)
    with torch.no_grad():
        embeds, *_ = sdxl_pipe.encode_prompt("a photo of a cat", do_classifier_free_guidance=False)
        ours = text.encode(text.tokenize(["a photo of a cat"]))
    assert text.width == sum(TINY_SDXL_WIDTHS) and torch.equal(ours, embeds)


def test_sdxl_base_concept_file_is_seventy_layers_under_400kb_and_200kb_half(tmp_path):
    with torch.device("meta"):  # SDXL base's shapes, no memory
        unet = UNet2DConditionModel(**SDXL_UNET)
        first = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT))
        second = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2))
    layers = cross_attention_modules(unet)
    widths = [encoder.get_input_embeddings().weight.shape[1] for encoder in (first, second)]
    encoding_width = first.config.hidden_size + second.config.hidden_size
    generator = torch.Generator().manual_seed(0)

    def vector(width):
        return torch.randn(width, generator=generator)

    concept = Concept(
        "<mycat>",
        "cat",
        [vector(widths[0]), vector(widths[1])],
        vector(encoding_width),
        vector(encoding_width),
        {name: vector(module.to_v.out_features) for name, module in layers.items()},
        "f" * 32,
    )
    assert len(layers) == 70 and sum(t.numel() for t in concept.value_targets.values()) == 83_200
    assert widths == [768, 1280] and encoding_width == 2048 and {m.to_k.in_features for m in layers.values()} == {2048}
    full = concept.save(tmp_path / "full.safetensors")
    half = concept.save(tmp_path / "half.safetensors", half=True)
    assert full.stat().st_size <= 400 * KB and half.stat().st_size <= 200 * KB, (
        full.stat().st_size,
        half.stat().st_size,
    )
    loaded = Concept.load(full)
    assert torch.equal(loaded.token_embeddings[1], concept.token_embeddings[1])


def test_c_is_over_both_encoders_concatenated_content_positions(sdxl_pipe):
    captions = CAPTIONS[:40]
    covariance = estimate_covariance(TextConditioning.of(sdxl_pipe), captions, batch_size=7)
    with torch.no_grad():
        encodings = torch.stack([penultimate(sdxl_pipe, caption) for caption in captions])
    keep = content_mask(tokenize(sdxl_pipe.tokenizer, captions), sdxl_pipe.tokenizer.eos_token_id)
    encodings = encodings[keep].double()
    expected = encodings.T @ encodings / encodings.shape[0]
    assert covariance.shape == (sum(TINY_SDXL_WIDTHS),) * 2
    torch.testing.assert_close(covariance, expected, rtol=1e-4, atol=1e-5 * expected.diagonal().mean().item())


def test_the_default_mask_is_the_supercategory_attention_map(sdxl_pipe, tmp_path):
    """Without masks, training reads the UNet's cross-attention to the supercategory, conditioned as SDXL is."""
    images = load_training_images(write_concept_images(tmp_path / "plain", alpha=False))
    trainer = ConceptTrainer(sdxl_pipe, images, "<mydisc>", "cat", TrainingConfig(batch_size=2, seed=0))
    masks = trainer.bank.masks
    assert trainer.bank.mask_source == "attention" and masks.shape[0] == 2 * len(images)
    assert masks.min() >= 0 and masks.max() <= 1 and masks.flatten(1).std(1).min() > 0
    trainer.restore_pipeline()


def test_the_default_mask_noises_as_training_does_whatever_the_sampler_did_before(sdxl_pipe):
    """SDXL's Euler sampler adds noise as x + sigma n (unscaled), and after a call at its last step's sigma, 0: the
    mask's latents are noised by the DDPM forward process of training instead, the same before and after a call."""
    from diffusers import DDPMScheduler

    from perfusion.training.masks import attention_masks

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def masks():
        return attention_masks(sdxl_pipe, latents, "cat", "a photo of a {}", 0.4, seed=0)

    first = masks()
    pictures(sdxl_pipe, "a photo of a dog")  # the sampler is left at its last step
    assert torch.equal(masks(), first)
    sdxl_pipe.scheduler = DDPMScheduler.from_config(sdxl_pipe.scheduler.config)
    assert torch.equal(masks(), first)


def test_the_default_masks_are_the_same_read_a_few_images_at_a_time(sdxl_pipe, monkeypatch):
    """The bank goes through the UNet in chunks (the whole of it at 1024 px is a lot of memory); rows are independent."""
    from perfusion.training import masks

    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = masks.attention_masks(sdxl_pipe, latents, "cat", "a photo of a {}", 0.4, seed=0)
    monkeypatch.setattr(masks, "MASK_BATCH", 2)
    chunked = masks.attention_masks(sdxl_pipe, latents, "cat", "a photo of a {}", 0.4, seed=0)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)  # batched products may round differently


def test_prompts_without_the_concept_stay_stock_and_with_it_are_edited(sdxl_pipe):
    stock, stock_cat = pictures(sdxl_pipe, "a photo of a dog"), pictures(sdxl_pipe, "a photo of a cat")
    load_concepts(sdxl_pipe, handmade_concept(sdxl_pipe), captions=CAPTIONS)
    assert np.array_equal(pictures(sdxl_pipe, "a photo of a dog"), stock)
    assert not np.array_equal(pictures(sdxl_pipe, "a photo of a <mycat>"), stock_cat)
    unload_concepts(sdxl_pipe)
    assert np.array_equal(pictures(sdxl_pipe, "a photo of a dog"), stock)
    assert "<mycat>" not in sdxl_pipe.tokenizer.get_vocab() and "<mycat>" not in sdxl_pipe.tokenizer_2.get_vocab()


def test_negative_rows_and_other_prompts_in_a_batch_stay_stock(sdxl_pipe):
    def batch(prompts, negative=None):
        generators = [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]
        return sdxl_pipe(
            prompts,
            negative_prompt=negative,
            num_inference_steps=3,
            guidance_scale=5.0,
            generator=generators,
            output_type="np",
        ).images

    stock = batch(["a cat", "a photo of a dog", "a cat"], negative=["red"] * 3)
    load_concepts(sdxl_pipe, handmade_concept(sdxl_pipe), captions=CAPTIONS)
    edited = batch(["a cat", "a photo of a <mycat>", "a cat"], negative=["red"] * 3)
    assert np.array_equal(edited[0], stock[0]) and np.array_equal(edited[2], stock[2])
    assert not np.array_equal(edited[1], stock[1])


def test_v_star_of_both_encoders_reaches_the_prompt_and_the_pooled_embedding(cat_pipe):
    concept = find_runtime(cat_pipe).concepts["<mycat>"].concept
    for encoder, tokenizer, vector in (
        (cat_pipe.text_encoder, cat_pipe.tokenizer, concept.token_embeddings[0]),
        (cat_pipe.text_encoder_2, cat_pipe.tokenizer_2, concept.token_embeddings[1]),
    ):
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<mycat>")]
        assert torch.equal(row, vector)
    with torch.no_grad():
        *_, pooled, _ = cat_pipe.encode_prompt("a photo of a <mycat>", do_classifier_free_guidance=False)
        *_, pooled_cat, _ = cat_pipe.encode_prompt("a photo of a cat", do_classifier_free_guidance=False)
    assert not torch.equal(pooled, pooled_cat)


def test_global_lock_keys_read_the_prompt_with_the_supercategory_in_both_encoders(cat_pipe):
    set_global_lock(cat_pipe, True)
    keys = routed_entries(cat_pipe, ["<mycat> next to a cat"])[0].key_encodings
    torch.testing.assert_close(keys, penultimate(cat_pipe, "cat next to a cat"))
    set_global_lock(cat_pipe, False)
    local = pictures(cat_pipe, "<mycat> next to a cat")
    assert not np.array_equal(pictures(cat_pipe, "<mycat> next to a cat", global_lock=True), local)


def test_clip_skip_is_followed_and_rows_without_the_concept_stay_stock(sdxl_pipe):
    """clip_skip=1 hands the UNet hidden_states[-3] of both encoders: the edit finds the row there."""

    def call(prompt):
        return sdxl_pipe(
            prompt, num_inference_steps=2, clip_skip=1, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images

    stock, cat = call("a photo of a dog"), call("a photo of a cat")
    load_concepts(sdxl_pipe, handmade_concept(sdxl_pipe), captions=CAPTIONS)
    assert np.array_equal(call("a photo of a dog"), stock)
    text = TextConditioning.of(sdxl_pipe)
    ids = text.tokenize(["a photo of a <mycat>"])
    with torch.no_grad():
        states = torch.cat(
            [
                tower.text_encoder(tower_ids, output_hidden_states=True).hidden_states[-3]
                for tower, tower_ids in zip(text.towers, ids)
            ],
            -1,
        )
    assert find_runtime(sdxl_pipe).router.find(states)[0].tokens == ("<mycat>",)
    with pytest.warns(UserWarning, match=r"<mycat>: the UNet is given another hidden state .* the gate may be off"):
        assert not np.array_equal(call("a photo of a <mycat>"), cat)


def test_the_default_hidden_state_gives_no_warning_about_the_gate(cat_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pictures(cat_pipe, "a photo of a <mycat>")


def test_regions_split_the_row_in_both_encoders(sdxl_pipe):
    load_concepts(
        sdxl_pipe,
        [handmade_concept(sdxl_pipe, "<mycat>", "cat", seed=1), handmade_concept(sdxl_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    set_composition(sdxl_pipe, "regions")
    split = routed_entries(sdxl_pipe, ["a <mycat> next to a <mymug>"])[0].split
    torch.testing.assert_close(split.plain, penultimate(sdxl_pipe, "a cat next to a mug"))
    torch.testing.assert_close(split.rows[0].encodings, penultimate(sdxl_pipe, "a <mycat> next to a mug"))
    assert [row.tokens for row in split.rows] == [("<mycat>",), ("<mymug>",)] and split.own_positions == [2, 6]
    set_composition(sdxl_pipe, "joint")
    joint = pictures(sdxl_pipe, "a <mycat> next to a <mymug>")
    regional = pictures(sdxl_pipe, "a <mycat> next to a <mymug>", composition="regions")
    assert regional.shape == joint.shape and not np.array_equal(regional, joint)


def test_in_regions_each_row_takes_the_pooled_embedding_of_its_own_prompt(sdxl_pipe):
    """The pooled embedding acts on every pixel: the plain row's is the plain prompt's, a concept's row's its own
    prompt's, so no concept's v* reaches another's region through it."""
    load_concepts(
        sdxl_pipe,
        [handmade_concept(sdxl_pipe, "<mycat>", "cat", seed=1), handmade_concept(sdxl_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    seen = []
    sdxl_pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["text_embeds"].clone()), with_kwargs=True
    )

    def pooled(prompt):
        with torch.no_grad():
            return sdxl_pipe.text_encoder_2(tokenize(sdxl_pipe.tokenizer_2, [prompt]))[0][0]

    pictures(sdxl_pipe, "a <mycat> next to a <mymug>", composition="regions")
    layout, after = seen[0], seen[-1]  # (negative, prompt); after the layout part + each concept's own row
    assert layout.shape[0] == 2 and after.shape[0] == 4
    torch.testing.assert_close(layout[1], pooled("a cat next to a mug"))
    for row, prompt in zip(after[1:], ["a cat next to a mug", "a <mycat> next to a mug", "a cat next to a <mymug>"]):
        torch.testing.assert_close(row, pooled(prompt))


def test_training_lowers_the_loss_and_moves_only_both_v_stars_and_value_targets(sdxl_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    before = base_weights(sdxl_pipe)
    config = TrainingConfig(steps=40, lr_embedding=1e-3, batch_size=2, gradient_accumulation=2, seed=0)
    result = train_concept(sdxl_pipe, images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    assert result.held_out_loss[1] < result.held_out_loss[0], result.held_out_loss
    after = base_weights(sdxl_pipe)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "<mydisc>" not in sdxl_pipe.tokenizer.get_vocab() and "<mydisc>" not in sdxl_pipe.tokenizer_2.get_vocab()
    concept = result.concept
    for tokenizer, encoder, vector in (
        (sdxl_pipe.tokenizer, sdxl_pipe.text_encoder, concept.token_embeddings[0]),
        (sdxl_pipe.tokenizer_2, sdxl_pipe.text_encoder_2, concept.token_embeddings[1]),
    ):
        word = tokenizer("cat", add_special_tokens=False).input_ids
        start = encoder.get_input_embeddings().weight[word].mean(0)
        assert vector.shape == start.shape and not torch.allclose(vector, start)
    layer = next(iter(concept.value_targets))
    start_values = linear_part(sdxl_pipe.unet.get_submodule(layer).to_v, concept.supercategory_encoding[None])[:, 0]
    assert not torch.allclose(concept.value_targets[layer], start_values)
    assert concept.concept_encoding.numel() == sum(TINY_SDXL_WIDTHS)
    loaded = Concept.load(concept.save(tmp_path / "disc.safetensors"))
    assert loaded.tensors().keys() == concept.tensors().keys()
    assert all(torch.equal(loaded.tensors()[name], tensor) for name, tensor in concept.tensors().items())
    load_concepts(sdxl_pipe, loaded, captions=CAPTIONS)
    assert pictures(sdxl_pipe, "a photo of a <mydisc>").shape[0] == 1


def test_sd1_and_sdxl_files_are_refused_by_the_other_in_one_line(sdxl_pipe, tiny_pipe):
    vocabulary = len(sdxl_pipe.tokenizer), len(sdxl_pipe.tokenizer_2)
    with pytest.raises(ConceptFileError, match="one text encoder .*this one has two") as refused:
        load_concepts(sdxl_pipe, handmade_concept(tiny_pipe))
    assert "\n" not in str(refused.value)
    assert find_runtime(sdxl_pipe) is None and (len(sdxl_pipe.tokenizer), len(sdxl_pipe.tokenizer_2)) == vocabulary
    with pytest.raises(ConceptFileError, match="two text encoders .*this one has one"):
        load_concepts(tiny_pipe, handmade_concept(sdxl_pipe), check=False)


def test_a_refiner_is_refused_in_one_line(sdxl_pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=sdxl_pipe.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=sdxl_pipe.text_encoder_2,
        tokenizer_2=sdxl_pipe.tokenizer_2,
        unet=sdxl_pipe.unet,
        scheduler=sdxl_pipe.scheduler,
        requires_aesthetics_score=True,
    )
    with pytest.raises(UnsupportedPipelineError, match="refiner"):
        load_concepts(refiner, handmade_concept(sdxl_pipe))


def test_the_baselines_refuse_sdxl_in_one_line(sdxl_pipe, tmp_path):
    from perfusion.baselines.textual_inversion import TextualInversionConfig, train

    images = load_training_images(write_concept_images(tmp_path / "disc"))
    with pytest.raises(UnsupportedPipelineError, match="not SDXL"):
        train(sdxl_pipe, images, "<mydisc>", "cat", TextualInversionConfig(steps=1), progress=False)


def test_sweep_and_eval_run_on_sdxl(sdxl_dir, tmp_path, capsys):
    concept = handmade_concept(load_pipeline(sdxl_dir), "<mydisc>", "cat").save(tmp_path / "disc.safetensors")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"background": "red"}\n{"prompt": "a {} next to a cup", "second_object": "cup"}\n')
    common = [
        "--model",
        str(sdxl_dir),
        "--concept",
        str(concept),
        "--prompts",
        str(prompts),
        "--images",
        str(write_concept_images(tmp_path / "disc")),
        "--images-per-prompt",
        "1",
        "--steps",
        "2",
    ]
    assert main(["sweep", *common, "--betas", "0.5,0.9", "--out", str(tmp_path / "sweep")]) == 0, (
        capsys.readouterr().err
    )
    assert len(list((tmp_path / "sweep" / "beta-0.900").glob("*.png"))) == 2
    assert main(["eval", *common, "--out", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics.csv").read_text().startswith("beta,")


def test_a_second_prompt_of_its_own_is_read_part_by_part(sdxl_pipe):
    """SDXL's prompt_2 goes to the second encoder alone: each part is locked and split from its own prompt."""
    load_concepts(
        sdxl_pipe,
        [handmade_concept(sdxl_pipe, "<mycat>", "cat", seed=1), handmade_concept(sdxl_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    first, second = "a <mycat> next to a mug", "the <mymug> next to a <mycat>"
    ids = [tokenize(sdxl_pipe.tokenizer, [first]), tokenize(sdxl_pipe.tokenizer_2, [second])]
    set_global_lock(sdxl_pipe, True)
    entry = routed_entries(sdxl_pipe, ids)[0]
    expected = torch.cat(
        [
            penultimate(sdxl_pipe, "a cat next to a mug", tower=0),
            penultimate(sdxl_pipe, "the mug next to a cat", tower=1),
        ],
        -1,
    )
    assert entry.tokens == ("<mycat>", "<mymug>")
    torch.testing.assert_close(entry.key_encodings, expected)
    set_composition(sdxl_pipe, "regions")
    split = routed_entries(sdxl_pipe, ids)[0].split
    assert split.own_positions == [2, 2]  # <mycat> in the first prompt, <mymug> only in the second
    images = sdxl_pipe(first, prompt_2=second, num_inference_steps=2, output_type="np").images
    assert images.shape[0] == 1 and np.isfinite(images).all()


def test_a_concept_in_one_of_the_two_prompts_only_is_warned_about(cat_pipe):
    """The gate reads e across both encoders' parts: with prompt_2 lacking the concept it may barely open."""
    with pytest.warns(UserWarning, match=r"<mycat>: in the prompt of one text encoder only \(prompt_2"):
        cat_pipe("a photo of a <mycat>", prompt_2="a photo of a cat", num_inference_steps=1, output_type="np")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cat_pipe("a photo of a <mycat>", prompt_2="a <mycat> on a sofa", num_inference_steps=1, output_type="np")


def test_a_second_v_star_of_the_wrong_width_is_refused_in_one_line(sdxl_pipe, tmp_path):
    concept = handmade_concept(sdxl_pipe)
    concept.token_embeddings[1] = concept.token_embeddings[1][:-1]
    path = concept.save(tmp_path / "narrow.safetensors")
    with pytest.raises(ConceptFileError, match=f"v\\* has width {TINY_SDXL_WIDTHS[1] - 1}.*text_encoder_2") as refused:
        load_concepts(sdxl_pipe, path, captions=CAPTIONS)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value) and find_runtime(sdxl_pipe) is None


def shared_tokenizer_pipe(folder):
    """The tiny SDXL pipeline with one tokenizer object for both text encoders, as a pipeline built in memory may be."""
    pipe = load_pipeline(folder)
    pipe.tokenizer_2 = pipe.tokenizer
    return pipe


def test_a_tokenizer_both_encoders_share_takes_the_token_once(sdxl_dir):
    """An SDXL pipeline built in memory may hand both text encoders one tokenizer object: the token goes into it once,
    each encoder gets its v* at that id, and unloading leaves the tokenizer and both encoders as they were."""
    pipe = shared_tokenizer_pipe(sdxl_dir)
    vocab, before = dict(pipe.tokenizer.get_vocab()), base_weights(pipe)
    stock = pictures(pipe, "a photo of a cat")
    concept = handmade_concept(pipe)
    load_concepts(pipe, concept, captions=CAPTIONS)
    token_id = pipe.tokenizer.convert_tokens_to_ids("<mycat>")
    for encoder, vector in zip((pipe.text_encoder, pipe.text_encoder_2), concept.token_embeddings):
        assert torch.equal(encoder.get_input_embeddings().weight[token_id], vector.to(encoder.dtype))
    assert np.array_equal(pictures(pipe, "a photo of a cat"), stock)
    pictures(pipe, "a photo of a <mycat>")
    unload_concepts(pipe)
    after = base_weights(pipe)
    assert pipe.tokenizer.get_vocab() == vocab and all(torch.equal(after[name], before[name]) for name in before)


def test_with_a_shared_tokenizer_unloading_one_of_two_concepts_renumbers_both_encoders_alike(sdxl_dir):
    """The tokens after an unloaded one move down an id in the tokenizer; both encoders' rows move with them."""
    pipe = shared_tokenizer_pipe(sdxl_dir)
    cat, mug = handmade_concept(pipe, "<mycat>", "cat", seed=1), handmade_concept(pipe, "<mymug>", "mug", seed=2)
    load_concepts(pipe, [cat, mug], captions=CAPTIONS)
    before = pipe.tokenizer.convert_tokens_to_ids("<mymug>")
    unload_concepts(pipe, "<mycat>")
    token_id = pipe.tokenizer.convert_tokens_to_ids("<mymug>")
    assert token_id == before - 1
    for encoder, vector in zip((pipe.text_encoder, pipe.text_encoder_2), mug.token_embeddings):
        weight = encoder.get_input_embeddings().weight
        assert weight.shape[0] == len(pipe.tokenizer) and torch.equal(weight[token_id], vector.to(weight.dtype))
    alone = shared_tokenizer_pipe(sdxl_dir)
    load_concepts(alone, handmade_concept(alone, "<mymug>", "mug", seed=2), captions=CAPTIONS)
    assert np.array_equal(pictures(pipe, "a photo of a <mymug>"), pictures(alone, "a photo of a <mymug>"))


def test_generation_keeps_the_pipelines_own_guidance_unless_told(sdxl_pipe):
    """SDXL's pipeline guides at 5.0 by default, SD's at 7.5: a config without guidance_scale keeps the pipeline's."""

    def images(**settings):
        return np.stack(
            [
                np.asarray(image)
                for image in generate(
                    sdxl_pipe, "a photo of a dog", GenerationConfig(num_inference_steps=2, **settings)
                )
            ]
        )

    default = images()
    assert np.array_equal(default, images(guidance_scale=5.0)) and not np.array_equal(
        default, images(guidance_scale=7.5)
    )


def test_a_misspelt_concept_in_prompt_2_is_refused_as_in_the_prompt(cat_pipe):
    config = GenerationConfig(num_inference_steps=1)
    with pytest.raises(GenerationError, match="<MYCAT>"):
        generate(cat_pipe, "a photo of a <mycat>", config, prompt_2="a photo of a <MYCAT>")
    with pytest.raises(GenerationError, match="<mydog>"):
        generate(cat_pipe, "a photo of a <mycat>", config, negative_prompt="a <mydog>")


def test_training_sends_each_photos_original_size_and_crop_as_time_ids(sdxl_pipe):
    """As diffusers' SDXL training scripts: (original height, width, crop top, left, size, size); it sent
    (S, S, 0, 0, S, S) for every photo (issue 33)."""
    from PIL import Image

    from perfusion.training.images import TrainingImage

    wide = Image.new("RGB", (48, 24), (200, 30, 30))
    tall = Image.new("RGB", (16, 40), (30, 30, 200))
    images = [TrainingImage("wide.png", wide, None), TrainingImage("tall.png", tall, None)]
    trainer = ConceptTrainer(sdxl_pipe, images, "<mydisc>", "cat", TrainingConfig(steps=1, batch_size=8, flip=False))
    size = trainer.resolution
    seen = []
    hook = sdxl_pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True
    )
    try:
        trainer.run(captions=CAPTIONS, progress=False)
    finally:
        hook.remove()
    rows = {tuple(int(v) for v in row) for ids in seen for row in ids}
    wide_row = (24, 48, 0, round((48 * size / 24 - size) / 2), size, size)
    tall_row = (40, 16, round((40 * size / 16 - size) / 2), 0, size, size)
    assert wide_row in rows and tall_row in rows
