"""Training a concept on a tiny pipeline: what moves, what must not, resuming, masks."""

from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from perfusion.pipeline.plans import linear_part
from perfusion.testing import build_tiny_pipeline, load_pipeline, small_corpus, write_concept_images
from perfusion.training.images import load_training_images
from perfusion.training.latents import forward_process, noised
from perfusion.training.trainer import ConceptTrainer, TrainingConfig, TrainingError, train_concept

CAPTIONS = small_corpus()
QUICK = dict(batch_size=2, gradient_accumulation=2, seed=0)


@pytest.fixture
def concept_images(tmp_path):
    return load_training_images(write_concept_images(tmp_path / "disc"))


def base_weights(pipe):
    return {
        f"{part}.{name}": tensor.clone()
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(pipe, part).state_dict().items()
    }


def test_training_lowers_the_loss_and_moves_only_v_star_and_value_targets(tiny_pipe, concept_images):
    before = base_weights(tiny_pipe)
    vocabulary = len(tiny_pipe.tokenizer)
    # The random tiny text encoder's embeddings are ~0.02 in size, so v* gets a smaller step than SD's 6e-3.
    config = TrainingConfig(steps=60, lr_embedding=1e-3, **QUICK)
    result = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    before_loss, after_loss = result.held_out_loss  # same images, noise, timesteps and prompts: deterministic
    assert after_loss < 0.96 * before_loss, result.held_out_loss  # measured: -7% for seeds 0, 1, 2
    after = base_weights(tiny_pipe)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for part in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder):
        assert all(p.grad is None for p in part.parameters())
    assert len(tiny_pipe.tokenizer) == vocabulary  # the pipeline is left as it was

    concept = result.concept
    word = tiny_pipe.tokenizer("cat", add_special_tokens=False).input_ids
    start_embedding = tiny_pipe.text_encoder.get_input_embeddings().weight[word].mean(0)
    assert not torch.allclose(concept.token_embeddings[0], start_embedding)
    attn = tiny_pipe.unet.get_submodule(next(iter(concept.value_targets)))
    start_values = linear_part(attn.to_v, concept.supercategory_encoding[None])[:, 0]
    assert not torch.allclose(concept.value_targets[next(iter(concept.value_targets))], start_values)
    assert concept.training["mask"] == "given" and concept.training["steps"] == 60


def test_value_drift_measures_how_far_o_v_left_its_start(tiny_pipe, concept_images):
    still = TrainingConfig(steps=3, lr_values=0.0, **QUICK)
    result = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", still, captions=CAPTIONS, progress=False)
    assert result.value_drift == pytest.approx((1.0, 1.0), abs=1e-5)  # o*_V never moved from W_V i*_super
    moved = TrainingConfig(steps=3, lr_values=0.5, **QUICK)  # far too high: Adam moves each coordinate ~0.5 a step
    result = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", moved, captions=CAPTIONS, progress=False)
    ratio, cosine = result.value_drift
    assert ratio > 2 and cosine < 0.9


def test_a_shared_encoding_trains_o_v_as_one_encodings_value_in_every_layer(tiny_pipe, concept_images):
    config = TrainingConfig(steps=4, lr_values=1e-2, value_space="shared-encoding", **QUICK)
    trainer = ConceptTrainer(tiny_pipe, concept_images, "<mydisc>", "cat", config)
    result = trainer.run(captions=CAPTIONS, progress=False)
    (shared,) = trainer.values.parameters.values()
    assert not torch.allclose(shared, result.concept.supercategory_encoding)  # the encoding trained
    for name, target in result.concept.value_targets.items():
        expected = linear_part(tiny_pipe.unet.get_submodule(name).to_v, shared.detach()[None])[:, 0]
        assert torch.allclose(target, expected, atol=1e-5), name  # o*_V = W_V e, the same e in each layer
        assert not target.requires_grad


def test_a_checkpoint_of_another_value_space_is_refused(tiny_pipe, concept_images, tmp_path):
    config = TrainingConfig(steps=2, checkpoint_every=1, value_space="shared-encoding", **QUICK)
    checkpoint = tmp_path / "disc.ckpt"
    train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", config, checkpoint=checkpoint, progress=False)
    other = replace(config, value_space="free")
    with pytest.raises(TrainingError, match="value_space"):
        train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", other, checkpoint=checkpoint, resume=True)


def test_key_lock_is_fixed_from_the_first_batch(tiny_pipe, concept_images):
    config = TrainingConfig(steps=5, **QUICK)
    initial = ConceptTrainer(tiny_pipe, concept_images, "<mydisc>", "cat", config).concept.supercategory_encoding
    result = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    assert torch.equal(result.concept.supercategory_encoding, initial.cpu())
    assert not torch.equal(result.concept.concept_encoding, initial.cpu())  # i* follows the EMA


@pytest.mark.parametrize("space", ["free", "encoding", "shared-encoding"])
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(
    tiny_pipe, concept_images, tmp_path, monkeypatch, space
):
    config = TrainingConfig(steps=6, checkpoint_every=3, value_space=space, **QUICK)
    straight = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)

    checkpoint = tmp_path / "disc.safetensors.ckpt"
    original_step, calls = ConceptTrainer.step, []

    def interrupted_step(self):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(ConceptTrainer, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train_concept(
            tiny_pipe,
            concept_images,
            "<mydisc>",
            "cat",
            config,
            checkpoint=checkpoint,
            captions=CAPTIONS,
            progress=False,
        )
    monkeypatch.setattr(ConceptTrainer, "step", original_step)
    assert checkpoint.exists()
    resumed = train_concept(
        tiny_pipe,
        concept_images,
        "<mydisc>",
        "cat",
        config,
        checkpoint=checkpoint,
        resume=True,
        captions=CAPTIONS,
        progress=False,
    )
    assert resumed.losses == straight.losses
    for name, tensor in straight.concept.tensors().items():
        assert torch.equal(resumed.concept.tensors()[name], tensor), name


def test_default_mask_is_the_supercategory_attention_map(tiny_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "plain", alpha=False))
    trainer = ConceptTrainer(tiny_pipe, images, "<mydisc>", "cat", TrainingConfig(flip=False, **QUICK))
    masks = trainer.bank.masks
    assert trainer.bank.mask_source == "attention"
    assert masks.shape == (4, 1) + trainer.bank.means.shape[-2:]
    assert masks.min() >= 0 and masks.amax(dim=(1, 2, 3)).allclose(torch.ones(4))


@pytest.mark.parametrize("sampler", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_v_prediction_models_train_on_velocity(tmp_path, concept_images, sampler):
    pipe = load_pipeline(build_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction"))
    pipe.scheduler = sampler.from_config(pipe.scheduler.config)  # DPM-Solver has no get_velocity of its own
    latents = torch.randn(3, 4, 8, 8)
    noisy, timesteps, target = noised(forward_process(pipe.scheduler), latents, torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.allclose(target, abar.sqrt() * noise - (1 - abar).sqrt() * latents, atol=1e-5)  # v (Salimans & Ho)
    trainer = ConceptTrainer(pipe, concept_images, "<mydisc>", "cat", TrainingConfig(**QUICK))
    noisy, timesteps, target, _, _, _ = trainer.micro_batch()
    assert not torch.equal(target, noisy)  # sanity: the target is the velocity, not the input
    result = train_concept(
        pipe, concept_images, "<mydisc>", "cat", TrainingConfig(steps=3, **QUICK), captions=CAPTIONS, progress=False
    )
    assert all(loss == loss for loss in result.losses)


def module_state(pipe):
    """Every parameter's requires_grad, device and dtype, and every module's training flag."""
    return {
        f"{part}.{name}": (tensor.requires_grad, tensor.device, tensor.dtype)
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(pipe, part).named_parameters()
    } | {
        f"{part}.{name}:training": module.training
        for part in ("unet", "vae", "text_encoder")
        for name, module in getattr(pipe, part).named_modules()
    }


def test_training_leaves_flags_devices_and_dtypes_as_it_found_them(tiny_pipe, concept_images):
    tiny_pipe.vae.requires_grad_(False)  # a mix: the UNet and text encoder trainable as loaded, the VAE frozen
    tiny_pipe.text_encoder.train()
    before = module_state(tiny_pipe)
    assert any(flag for flag, _, _ in (v for k, v in before.items() if not k.endswith(":training")))
    train_concept(
        tiny_pipe,
        concept_images,
        "<mydisc>",
        "cat",
        TrainingConfig(steps=2, **QUICK),
        captions=CAPTIONS,
        progress=False,
    )
    assert module_state(tiny_pipe) == before


def test_training_steps_rebuild_the_span_plan_but_never_the_cholesky_factor(tiny_pipe, concept_images):
    """i* moves every step: the C^-1-orthonormal basis is recomputed, the factor of C^-1 is computed once."""
    from unittest import mock

    import perfusion.pipeline.plans

    trainer = ConceptTrainer(tiny_pipe, concept_images, "<mydisc>", "cat", TrainingConfig(steps=3, **QUICK))
    trainer.install(captions=CAPTIONS)
    try:
        with (
            mock.patch("torch.linalg.cholesky", wraps=torch.linalg.cholesky) as cholesky,
            mock.patch.object(
                perfusion.pipeline.plans, "composition_basis", wraps=perfusion.pipeline.plans.composition_basis
            ) as basis,
        ):
            for _ in range(3):
                trainer.step()
    finally:
        trainer.uninstall()
    assert cholesky.call_count == 0 and basis.call_count >= 3


def test_a_training_that_fails_to_start_leaves_the_pipeline_as_it_found_it(tiny_pipe, concept_images, tmp_path):
    before = module_state(tiny_pipe)
    with pytest.raises(Exception, match="no checkpoint"):
        train_concept(
            tiny_pipe,
            concept_images,
            "<mydisc>",
            "cat",
            TrainingConfig(steps=2, **QUICK),
            checkpoint=tmp_path / "missing.ckpt",
            resume=True,
            captions=CAPTIONS,
            progress=False,
        )
    assert module_state(tiny_pipe) == before
    from perfusion.pipeline.loader import find_runtime

    assert find_runtime(tiny_pipe) is None


def test_the_concepts_fingerprint_is_the_base_models_under_mixed_precision(tiny_pipe, concept_images):
    from accelerate.state import AcceleratorState

    from perfusion.pipeline.fingerprint import pipeline_fingerprint

    expected = pipeline_fingerprint(tiny_pipe)
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        result = train_concept(
            tiny_pipe,
            concept_images,
            "<mydisc>",
            "cat",
            TrainingConfig(steps=1, mixed_precision="bf16", **QUICK),
            captions=CAPTIONS,
            progress=False,
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.concept.base_fingerprint == expected


@pytest.mark.parametrize("resolution", [4, 20, 100])
def test_a_training_size_that_is_not_a_multiple_of_8_pixels_is_refused(resolution):
    with pytest.raises(TrainingError, match=f"resolution must be a positive multiple of 8 pixels, got {resolution}"):
        TrainingConfig(resolution=resolution)


@pytest.mark.parametrize("pipeline_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mixed_precision", ["auto", "no", "bf16"])
def test_the_defaults_train_a_half_precision_pipeline(tiny_pipe, concept_images, pipeline_dtype, mixed_precision):
    """A GPU user's pipeline is loaded in fp16 (issue 33): training once fed it fp32 inputs ("mat1 and mat2 must
    have the same dtype"). Every setting trains, and the pipeline keeps its dtype afterwards."""
    tiny_pipe.to(pipeline_dtype)
    config = TrainingConfig(steps=2, mixed_precision=mixed_precision, **QUICK)
    result = train_concept(tiny_pipe, concept_images, "<mydisc>", "cat", config, captions=CAPTIONS, progress=False)
    assert all(torch.isfinite(target).all() for target in result.concept.value_targets.values())
    assert result.concept.value_targets[next(iter(result.concept.value_targets))].dtype == torch.float32
    assert tiny_pipe.unet.dtype == pipeline_dtype and tiny_pipe.vae.dtype == pipeline_dtype
