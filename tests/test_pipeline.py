"""Perfusion inside a real diffusers pipeline (tiny, random, loaded with from_pretrained)."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.concept.format import ConceptFileError
from perfusion.pipeline.generation import GenerationConfig, GenerationError, generate
from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.pipeline.processor import PerfusionAttnProcessor
from perfusion.pipeline.settings import set_concept_options, set_global_lock
from perfusion.pipeline.text import encode, tokenize
from perfusion.testing import handmade_concept, routed_entries, small_corpus

CAPTIONS = small_corpus()


def images(pipe, prompt, seed=0, **kwargs):
    config = GenerationConfig(
        num_inference_steps=3,
        guidance_scale=5.0,
        num_images_per_prompt=kwargs.pop("num_images", 1),
        seed=seed,
        global_lock=kwargs.pop("global_lock", False),
    )
    return np.stack([np.asarray(image) for image in generate(pipe, prompt, config, **kwargs)])


def test_prompt_without_a_concept_gives_exactly_the_stock_output(tiny_pipe):
    stock = images(tiny_pipe, "a photo of a cat next to a cat", num_images=2)
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    assert np.array_equal(images(tiny_pipe, "a photo of a cat next to a cat", num_images=2), stock)


def test_only_cross_attention_gets_the_edit_processor(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    for name, processor in tiny_pipe.unet.attn_processors.items():
        assert isinstance(processor, PerfusionAttnProcessor) == (
            name.removesuffix(".processor") in cross_attention_modules(tiny_pipe.unet)
        )
        if name.endswith("attn1.processor"):
            assert isinstance(processor, AttnProcessor2_0)


def test_unload_restores_processors_tokenizer_and_output(tiny_pipe):
    originals = dict(tiny_pipe.unet.attn_processors)
    vocabulary = len(tiny_pipe.tokenizer)
    stock = images(tiny_pipe, "a photo of a cat")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    assert not np.array_equal(images(tiny_pipe, "a photo of a <mycat>"), stock)
    unload_concepts(tiny_pipe)
    assert all(tiny_pipe.unet.attn_processors[name] is processor for name, processor in originals.items())
    assert len(tiny_pipe.tokenizer) == vocabulary
    assert find_runtime(tiny_pipe) is None
    assert np.array_equal(images(tiny_pipe, "a photo of a cat"), stock)


def test_negative_rows_and_other_prompts_in_a_batch_stay_stock(tiny_pipe):
    """One batch, guidance on: the unconditional rows and a plain prompt's row are exactly the stock ones."""

    def batch(prompts):
        generators = [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]
        return tiny_pipe(
            prompts, num_inference_steps=3, guidance_scale=5.0, generator=generators, output_type="np"
        ).images

    stock = batch(["a cat", "a photo of a dog", "a cat"])
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    edited = batch(["a cat", "a photo of a <mycat>", "a cat"])
    assert np.array_equal(edited[0], stock[0]) and np.array_equal(edited[2], stock[2])
    assert not np.array_equal(edited[1], stock[1])


def test_global_lock_keys_read_the_prompt_with_the_supercategory(tiny_pipe):
    """Only the concept token is replaced: the ordinary "cat" in the same prompt stays a cat."""
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    set_global_lock(tiny_pipe, True)
    keys = routed_entries(tiny_pipe, ["<mycat> next to a cat"])[0].key_encodings
    set_global_lock(tiny_pipe, False)
    with torch.no_grad():
        expected = encode(tiny_pipe.text_encoder, tokenize(tiny_pipe.tokenizer, ["cat next to a cat"]))[0]
    torch.testing.assert_close(keys, expected)
    local = images(tiny_pipe, "<mycat> next to a cat")
    assert not np.array_equal(images(tiny_pipe, "<mycat> next to a cat", global_lock=True), local)


def test_a_concept_leaves_prompts_of_another_concept_exactly_unchanged(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe, "<mycat>", "cat", seed=1), captions=CAPTIONS)
    alone = images(tiny_pipe, "a photo of a <mycat> on red")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe, "<mymug>", "mug", seed=2))
    assert np.array_equal(images(tiny_pipe, "a photo of a <mycat> on red"), alone)
    both = images(tiny_pipe, "a <mycat> next to a <mymug>")
    assert both.shape == alone.shape and not np.array_equal(both, alone)


def test_beta_is_a_generation_time_knob(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    low = images(tiny_pipe, "a photo of a <mycat>", settings={"<mycat>": (0.3, 0.15)})
    high = images(tiny_pipe, "a photo of a <mycat>", settings={"<mycat>": (0.9, 0.15)})
    assert not np.array_equal(low, high)


def test_foreign_concept_is_refused(tiny_pipe, tmp_path):
    concept = handmade_concept(tiny_pipe)
    concept.base_fingerprint = "0" * 32
    originals = dict(tiny_pipe.unet.attn_processors)
    with pytest.raises(ConceptFileError, match="another base model"):
        load_concepts(tiny_pipe, concept, captions=CAPTIONS)
    # Refused before anything changed: no runtime, stock processors, no new token.
    assert find_runtime(tiny_pipe) is None
    assert all(tiny_pipe.unet.attn_processors[name] is processor for name, processor in originals.items())
    assert "<mycat>" not in tiny_pipe.tokenizer.get_vocab()


def test_unknown_token_in_the_prompt_is_refused(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    with pytest.raises(GenerationError, match="unknown token <mydog>"):
        images(tiny_pipe, "a <mydog> on a sofa")


def test_fused_projections_are_refused(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    for module in tiny_pipe.unet.modules():
        if hasattr(module, "fused_projections"):
            module.fused_projections = True
    with pytest.raises(RuntimeError, match="unfuse_qkv_projections"):
        images(tiny_pipe, "a photo of a <mycat>")


def test_edit_composes_with_a_peft_lora_on_the_projections(tiny_pipe):
    """The edit is a correction on top of to_k/to_v, so W i* includes the LoRA's delta."""
    from peft import LoraConfig

    torch.manual_seed(0)  # the LoRA's weights: the same whatever tests ran before (its tolerance is 1e-5)
    tiny_pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_k", "to_v"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, parameter in tiny_pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    concept = handmade_concept(tiny_pipe)
    load_concepts(tiny_pipe, concept, captions=CAPTIONS, check=False)
    set_concept_options(tiny_pipe, "<mycat>", beta=0.5, tau=1e-4)
    from perfusion.pipeline.router import CallContext

    find_runtime(tiny_pipe).router.context = CallContext(
        [(("<mycat>",), torch.tensor([0]), None, None)], None
    )  # the processor alone
    processor = next(p for p in tiny_pipe.unet.attn_processors.values() if isinstance(p, PerfusionAttnProcessor))
    attn = tiny_pipe.unet.get_submodule(processor.layer)
    e = concept.concept_encoding[None, None]
    with torch.no_grad():
        key, value = processor.edit(attn, e, attn.to_k(e), attn.to_v(e))
        torch.testing.assert_close(key, attn.to_k(concept.supercategory_encoding[None, None]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value[0, 0], concept.value_targets[processor.layer], atol=1e-5, rtol=1e-5)


def test_raising_beta_moves_the_unet_output_steadily_away_from_the_concept(tiny_pipe):
    """One UNet call per beta on fixed inputs: the distance from the beta=0 output never falls as beta rises."""
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    with torch.no_grad():
        states = encode(tiny_pipe.text_encoder, tokenize(tiny_pipe.tokenizer, ["a photo of a <mycat> on red"]))
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = []
    for beta in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        set_concept_options(tiny_pipe, "<mycat>", beta=beta, tau=0.15)
        with torch.no_grad():
            outputs.append(tiny_pipe.unet(sample, torch.tensor([500]), encoder_hidden_states=states).sample)
    distances = [(output - outputs[0]).norm().item() for output in outputs]
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), distances


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_concept_made_in_fp32_loads_into_a_half_precision_load_of_its_base_model(tiny_pipeline_dir, dtype):
    """The same weights opened in fp32, fp16 or bf16 are one base model (issue 33; an fp16-rounded digest told bf16
    apart)."""
    from perfusion.pipeline.fingerprint import trained_on
    from perfusion.testing import load_pipeline

    full = load_pipeline(tiny_pipeline_dir)
    concept = handmade_concept(full)
    half = load_pipeline(tiny_pipeline_dir).to(dtype)
    assert trained_on(half, concept.base_fingerprint) and trained_on(full, handmade_concept(half).base_fingerprint)
    load_concepts(half, concept, captions=CAPTIONS)
    picture = images(half, "a photo of a <mycat>")
    assert picture.shape == (1, 16, 16, 3)


def test_another_base_model_does_not_match(tiny_pipeline_dir, tmp_path):
    from perfusion.pipeline.fingerprint import trained_on
    from perfusion.testing import build_tiny_pipeline, load_pipeline

    other = load_pipeline(build_tiny_pipeline(tmp_path / "other", seed=1))
    assert not trained_on(other, handmade_concept(load_pipeline(tiny_pipeline_dir)).base_fingerprint)


@pytest.mark.parametrize("damage", ["2.661133904e+0181.199857644e+00", "nan", "1.0,2.0"])
def test_a_damaged_fingerprint_is_refused_as_another_base_model(tiny_pipe, damage):
    """A fuzzed header byte once made a v2 fingerprint unparsable: a ValueError escaped instead of one clear line."""
    concept = handmade_concept(tiny_pipe)
    names = concept.base_fingerprint.split(":")[1]
    concept.base_fingerprint = f"{concept.base_fingerprint.split(':')[0]}:{names}:{damage}"
    with pytest.raises(ConceptFileError, match="another base model"):
        load_concepts(tiny_pipe, concept, captions=CAPTIONS)


def test_transformers_4_weight_names_give_the_same_fingerprint(tiny_pipe):
    """transformers 4's CLIPTextModel names its weights "text_model.encoder...", 5's "encoder..."."""
    from perfusion.concept.fingerprint import format_fingerprint
    from perfusion.pipeline.fingerprint import pipeline_tensors

    tensors = pipeline_tensors(tiny_pipe)
    version_4 = [(name.replace("text_encoder.", "text_encoder.text_model.", 1), tensor) for name, tensor in tensors]
    assert format_fingerprint(version_4) == format_fingerprint(tensors)


@pytest.mark.parametrize("layout", ["transformers 5", "transformers 4"])
def test_a_concept_file_with_the_fingerprint_of_before_still_loads(tiny_pipe, layout):
    """Files written before the v2 fingerprint carry a digest of the fp16-rounded values by name."""
    from perfusion.concept.fingerprint import weights_digest
    from perfusion.pipeline.fingerprint import pipeline_tensors

    tensors = pipeline_tensors(tiny_pipe)
    if layout == "transformers 4":
        tensors = [(name.replace("text_encoder.", "text_encoder.text_model.", 1), tensor) for name, tensor in tensors]
    concept = handmade_concept(tiny_pipe)
    concept.base_fingerprint = weights_digest(tensors)[:32]
    load_concepts(tiny_pipe, concept, captions=CAPTIONS)
    stranger = handmade_concept(tiny_pipe, token="<mydog>", supercategory="dog")
    stranger.base_fingerprint = "f" * 32
    with pytest.raises(ConceptFileError, match="another base model"):
        load_concepts(tiny_pipe, stranger, captions=CAPTIONS)


def test_every_top_level_name_is_what_the_readme_calls_even_after_its_module_is_imported():
    """`from perfusion import GenerationConfig` imports the module that holds `generate`; a submodule of the same
    name as an exported function would then shadow the function (perfusion.generate was the module)."""
    import subprocess
    import sys

    code = (
        "import perfusion\nfrom perfusion import GenerationConfig, TrainingConfig\n"
        "for name in perfusion.__all__:\n    value = getattr(perfusion, name)\n"
        "    assert not type(value).__name__ == 'module', name\n"
        "assert callable(perfusion.generate) and callable(perfusion.train_concept)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # a fresh interpreter: no module imported before


def plain_call(pipe, prompt, **kwargs):
    generator = torch.Generator().manual_seed(0)
    output = pipe(prompt, num_inference_steps=3, guidance_scale=5.0, generator=generator, output_type="np", **kwargs)
    return output.images


def test_a_generate_calls_settings_apply_to_that_call_only(tiny_pipe):
    load_concepts(
        tiny_pipe,
        [handmade_concept(tiny_pipe, "<mycat>", "cat", seed=1), handmade_concept(tiny_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    prompt = "a <mycat> next to a <mymug>"
    before = plain_call(tiny_pipe, prompt)
    config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, global_lock=True, composition="regions")
    generate(tiny_pipe, prompt, config, {"<mycat>": (0.3, 0.2)})
    assert np.array_equal(plain_call(tiny_pipe, prompt), before)


@pytest.mark.parametrize("normed", [False, True], ids=["sdxl-penultimate", "clip-skip-normed"])
def test_the_edit_acts_on_the_hidden_state_the_pipeline_hands_the_unet(tiny_pipe, normed):
    """SDXL conditions the UNet on the penultimate layer, SD's clip_skip on an earlier layer after the final norm."""
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)

    def penultimate(prompt):
        ids = tokenize(tiny_pipe.tokenizer, [prompt])
        with torch.no_grad():
            states = tiny_pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            return tiny_pipe.text_encoder.final_layer_norm(states) if normed else states

    embeds, negative = penultimate("a photo of a <mycat>"), penultimate("")
    edited = plain_call(tiny_pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    unload_concepts(tiny_pipe)
    assert not np.array_equal(
        plain_call(tiny_pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative), edited
    )


def test_loading_copies_the_callers_concept_and_never_changes_it(tiny_pipe):
    concept = handmade_concept(tiny_pipe)
    targets = concept.value_targets
    saved = {layer: target.clone() for layer, target in targets.items()}
    load_concepts(tiny_pipe, concept, captions=CAPTIONS)
    assert concept.value_targets is targets and all(torch.equal(targets[k], saved[k]) for k in saved)
    before = images(tiny_pipe, "a photo of a <mycat>")
    for target in targets.values():  # the caller changes its own object afterwards: the pipeline does not see it
        target.zero_()
    concept.concept_encoding = torch.zeros_like(concept.concept_encoding)
    assert np.array_equal(images(tiny_pipe, "a photo of a <mycat>"), before)


def test_a_lora_loaded_between_calls_is_seen_by_the_edit(tiny_pipe):
    """W_K u and W_V u are read off the projections: a LoRA added after a generation acts on the next one exactly as
    on a pipeline that had it before the concept was loaded."""
    from peft import LoraConfig

    concept = handmade_concept(tiny_pipe)
    load_concepts(tiny_pipe, concept, captions=CAPTIONS, check=False)
    images(tiny_pipe, "a photo of a <mycat>")  # plans built on the plain projections
    tiny_pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_k", "to_v"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, parameter in tiny_pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    after = images(tiny_pipe, "a photo of a <mycat>")
    unload_concepts(tiny_pipe)
    load_concepts(tiny_pipe, concept, captions=CAPTIONS, check=False)  # fresh plans
    assert np.array_equal(images(tiny_pipe, "a photo of a <mycat>"), after)


def test_a_concept_whose_token_the_caller_removed_edits_nothing(tiny_pipe):
    """diffusers' unload_textual_inversion() takes every added token out; CLIP would then read the concept's id as
    its unknown token, the end-of-text one, which every prompt holds."""
    stock = images(tiny_pipe, "a photo of a cat")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    tiny_pipe.unload_textual_inversion()
    assert np.array_equal(images(tiny_pipe, "a photo of a cat"), stock)


def test_settings_for_a_concept_not_loaded_are_one_clear_error(tiny_pipe):
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    with pytest.raises(GenerationError, match="<mydog>, which is not loaded"):
        images(tiny_pipe, "a photo of a <mycat>", settings={"<mydog>": (0.5, None)})


def test_prompt_embeds_encoded_before_an_unload_are_left_unedited_after_it(tiny_pipe):
    """Unloading renumbers the added tokens, so rows remembered before it are forgotten: no stale ids re-encoded."""
    load_concepts(
        tiny_pipe,
        [handmade_concept(tiny_pipe, "<mycat>", "cat", seed=1), handmade_concept(tiny_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    set_global_lock(tiny_pipe, True)
    with torch.no_grad():
        embeds, negative = tiny_pipe.encode_prompt("a <mycat> next to a <mymug>", "cpu", 1, True)
    edited = plain_call(tiny_pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    unload_concepts(tiny_pipe, "<mycat>")
    after = plain_call(tiny_pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    unload_concepts(tiny_pipe)
    assert np.array_equal(after, plain_call(tiny_pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative))
    assert not np.array_equal(after, edited)


@pytest.mark.parametrize("given", [20, 0, 512.0, True, "512"])
def test_an_image_size_that_is_not_a_multiple_of_8_pixels_is_refused(given):
    with pytest.raises(GenerationError, match="height must be a positive multiple of 8"):
        GenerationConfig(height=given)


def test_an_image_size_of_a_numpy_integer_is_taken_as_an_int():
    config = GenerationConfig(height=np.int64(24), width=np.int32(16))
    assert (config.height, config.width) == (24, 16) and type(config.height) is int


def test_an_image_size_the_vae_cannot_make_is_refused_before_any_step(tiny_pipe):
    tiny_pipe.vae_scale_factor = 16  # a VAE that downsamples 16x (the tiny one does 2x)
    with pytest.raises(GenerationError, match="width must be a multiple of 16 for this pipeline's VAE, got 24"):
        generate(tiny_pipe, "a photo of a cat", GenerationConfig(num_inference_steps=1, width=24))


def test_a_call_with_more_prompt_rows_than_the_router_keeps_is_edited_in_every_row(tiny_pipe):
    """The router keeps 64 rows per text encoder between encoding and denoising; one call with more keeps them all."""
    from perfusion.pipeline.router import REGISTRY_ROWS

    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    prompts = [f"a photo of a <mycat> {'on a sofa ' * (n % 3)}{'red ' * (n // 3)}" for n in range(REGISTRY_ROWS + 6)]
    entries = routed_entries(tiny_pipe, prompts)
    assert len(set(prompts)) == len(prompts) and all(entry is not None for entry in entries)


def test_a_concept_trained_against_another_corpus_is_warned_about_in_one_line(tiny_pipe):
    """s(e) is measured in the C^-1 metric: a C from other captions may open the gate elsewhere (issue 33)."""
    import warnings

    from perfusion.pipeline.covariance import corpus_label

    concept = handmade_concept(tiny_pipe)
    concept.training = {"covariance_corpus": corpus_label(CAPTIONS[:-1])}
    with pytest.warns(UserWarning, match="trained with C from captions:"):
        load_concepts(tiny_pipe, concept, captions=CAPTIONS)
    unload_concepts(tiny_pipe)
    concept.training = {"covariance_corpus": corpus_label(CAPTIONS)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_concepts(tiny_pipe, concept, captions=CAPTIONS)


def test_training_records_the_corpus_of_its_c(tiny_pipe, tmp_path):
    from perfusion.pipeline.covariance import corpus_label
    from perfusion.testing import write_concept_images
    from perfusion.training.images import load_training_images
    from perfusion.training.trainer import TrainingConfig, train_concept

    images = load_training_images(write_concept_images(tmp_path / "disc"))
    config = TrainingConfig(steps=1, batch_size=1, gradient_accumulation=1)
    result = train_concept(tiny_pipe, images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    assert result.concept.training["covariance_corpus"] == corpus_label(CAPTIONS)


def test_a_model_folders_own_captions_give_its_c(tiny_pipeline_dir, tmp_path):
    """A folder with perfusion_captions.txt (the embedded model's: its world's captions) estimates C from them when
    no captions are given, and says so in the label concept files record."""
    import shutil

    from perfusion.pipeline.corpus import MODEL_CAPTIONS
    from perfusion.pipeline.covariance import corpus_label
    from perfusion.pipeline.loader import find_runtime
    from perfusion.testing import load_pipeline

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / MODEL_CAPTIONS).write_text("\n".join(CAPTIONS))
    pipe = load_pipeline(folder)
    load_concepts(pipe, handmade_concept(pipe))
    assert find_runtime(pipe).corpus == corpus_label(CAPTIONS)
    given = CAPTIONS[:-1]  # captions given by the caller still win
    other = load_pipeline(folder)
    load_concepts(other, handmade_concept(other), captions=given)
    assert find_runtime(other).corpus == corpus_label(given)


def test_attention_slicing_after_loading_keeps_the_edit_and_says_so_once(tiny_pipe):
    """Low-VRAM users call enable_attention_slicing() after loading: it replaced every processor, and the concept
    acted as textual inversion only, without a word (issue 33)."""
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    edited = images(tiny_pipe, "a photo of a <mycat>")
    tiny_pipe.enable_attention_slicing(1)
    with pytest.warns(UserWarning, match="put back on top of them"):
        sliced = images(tiny_pipe, "a photo of a <mycat>")
    assert np.abs(sliced.astype(int) - edited.astype(int)).max() <= 1  # slicing itself moves the last bits only
    layers = cross_attention_modules(tiny_pipe.unet).values()
    assert all(isinstance(module.processor, PerfusionAttnProcessor) for module in layers)
    assert type(next(iter(layers)).processor.original).__name__ == "SlicedAttnProcessor"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images(tiny_pipe, "a photo of a <mycat>")  # said once
    unload_concepts(tiny_pipe)
    assert type(next(iter(layers)).processor).__name__ == "SlicedAttnProcessor"  # the user's choice stays
