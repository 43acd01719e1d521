"""The embedded base model's tooling: tokenizer, model building, export/load, resumable training (tiny configs)."""

import dataclasses
import random
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTokenizer

from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.pipeline.corpus import model_captions
from perfusion.recipes import read_recipe
from perfusion.world.basemodel import model as models
from perfusion.world.basemodel import train_base as train
from perfusion.world.basemodel.config import (
    ArchitectureConfig,
    TokenizerConfig,
    UnetTrainingConfig,
    VaeTrainingConfig,
    from_dict,
    to_dict,
)
from perfusion.world.basemodel.data import LatentPool, SceneSource, world_captions
from perfusion.world.basemodel.export import export
from perfusion.world.basemodel.tokenizer import build_tokenizer, words_split

WORDS = "a photo of the cat kitten tabby dog cup on blue red background small large left right centre".split()
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(
        directory, WORDS, ["a small cat on the left, blue background"] * 10, TokenizerConfig(vocab_size=600)
    )
    return directory


def test_every_world_word_is_one_token(tokenizer_dir):
    assert words_split(CLIPTokenizer.from_pretrained(tokenizer_dir), WORDS) == []


def test_any_text_tokenizes_without_unknowns_and_round_trips(tokenizer_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text = "A Zebra-crossing, 42 ünïcode 🐱 words!"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]  # the unknown token is <|endoftext|>: it must not appear inside
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_pads_to_its_max_length_with_end_of_text_like_sd1(tokenizer_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert (
        len(ids) == TokenizerConfig().model_max_length and ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    )


def test_new_concept_token_is_one_token(tokenizer_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    size = len(tokenizer)
    assert tokenizer.add_tokens("<mycat>") == 1
    ids = tokenizer("a <mycat> on blue", add_special_tokens=False).input_ids
    assert ids[1] == size and len(ids) == 4


def tiny_pipeline(tokenizer_dir, architecture) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return models.assemble_pipeline(
        models.build_vae(architecture),
        models.build_unet(architecture),
        models.build_text_encoder(architecture, tokenizer),
        tokenizer,
        architecture,
    )


def test_saved_fp16_pipeline_loads_as_fp32_and_generates(tokenizer_dir, tmp_path, tiny_architecture):
    models.save_pipeline(tiny_pipeline(tokenizer_dir, tiny_architecture), tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)


def test_pipeline_saved_in_small_shards_loads_the_same_weights(tokenizer_dir, tmp_path, tiny_architecture):
    pipeline = tiny_pipeline(tokenizer_dir, tiny_architecture)
    limit = 64 * 1024  # bytes: small enough that the tiny UNet and text encoder need several shards
    models.save_pipeline(pipeline, tmp_path / "pipe", dtype=torch.float32, max_shard_bytes=limit)
    files = list((tmp_path / "pipe").rglob("*.safetensors"))
    assert len(files) > 3
    for file in files:  # a tensor larger than the limit gets a file of its own (tensors are never split)
        with safe_open(file, "pt") as weights:
            assert file.stat().st_size <= limit * 1.1 or len(weights.keys()) == 1, file  # 10%: the header
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    for name in ("unet", "text_encoder", "vae"):
        expected, got = getattr(pipeline, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(expected[key], got[key]) for key in expected), name


def test_unet_has_cross_attention_at_two_resolutions():
    unet = models.build_unet(ArchitectureConfig())
    layers = cross_attention_modules(unet)
    widths = {m.to_k.in_features for m in layers.values()}
    resolutions = {n.split(".")[0] + n.split(".")[1] for n in layers}
    assert widths == {ArchitectureConfig().text_hidden_size} and len(resolutions) >= 3  # down, mid, up blocks


class Scene:
    def __init__(self, seed):
        rng = random.Random(seed)
        self.spec = (rng.choice(list(COLOURS)), rng.choice(list(COLOURS)))
        self.image = Image.new("RGB", (64, 64), COLOURS[self.spec[0]])
        self.image.paste(COLOURS[self.spec[1]], (16, 16, 48, 48))
        self.caption = caption(self.spec, rng)


def caption(spec, rng):
    return f"a {spec[1]} cup on {spec[0]} background"


SOURCE = SceneSource(make_scene=Scene, caption=caption, vocabulary=lambda: WORDS)


class StopAfter:
    """A stop flag that turns true after n checks (one check per training step)."""

    def __init__(self, n):
        self.n = n

    def __bool__(self):
        self.n -= 1
        return self.n < 0


def test_saved_config_with_a_removed_field_still_loads():
    saved = {**to_dict(UnetTrainingConfig(batch_size=8)), "ema_warmup_steps": 2000}  # as older checkpoints hold it
    assert from_dict(UnetTrainingConfig, saved) == UnetTrainingConfig(batch_size=8)


def test_min_snr_weights_keep_the_noisiest_steps_under_v_prediction(tiny_architecture):
    scheduler = models.build_training_scheduler(tiny_architecture)
    timesteps = torch.tensor([0, 500, 999])
    v = train.min_snr_weights(scheduler, timesteps, 5.0, "v_prediction")
    assert v[0] < 0.01 and v[2] == 1.0  # low noise capped; zero SNR at t=999 keeps full weight
    eps = train.min_snr_weights(
        models.build_training_scheduler(
            dataclasses.replace(tiny_architecture, prediction_type="epsilon", zero_terminal_snr=False)
        ),
        timesteps,
        5.0,
        "epsilon",
    )
    assert eps[0] < 0.01 and eps[2] == 1.0


def test_the_weight_average_ramps_its_decay_up_and_round_trips_through_a_checkpoint():
    net = torch.nn.Linear(2, 2)
    average = train.moving_average(net, 0.999)
    with torch.no_grad():
        net.weight.add_(1.0)
    average.step(net.parameters())
    assert average.cur_decay_value == pytest.approx(2 / 11)  # the first update averages: (1 + n) / (10 + n), n = 1
    weights = train.averaged_weights(average, net)
    assert weights.keys() == dict(net.named_parameters()).keys()  # by name, as "ema_unet" / "ema_text" hold them
    restored = train.moving_average(net, 0.999)
    train.restore_average(restored, net, {name: value.clone() for name, value in weights.items()}, 1)
    average.step(net.parameters()), restored.step(net.parameters())
    assert restored.cur_decay_value == pytest.approx(3 / 12)
    assert all(torch.equal(a, b) for a, b in zip(average.shadow_params, restored.shadow_params))


def test_timestep_sampling_can_favour_the_noisiest_steps():
    generator = torch.Generator().manual_seed(0)
    assert train.sample_timesteps(1000, 1000, generator, 0.0, 700).lt(700).float().mean() > 0.6  # uniform
    favoured = train.sample_timesteps(1000, 1000, generator, 0.5, 700)
    assert 0.6 < favoured.ge(700).float().mean() < 0.7 and favoured.max() < 1000  # 0.5 + 0.5 * 0.3 at or above 700


def test_learning_rate_can_stay_flat_then_cool_down():
    factor = train.learning_rate_factor
    assert factor(0, 10, 100, 0.1) == pytest.approx(0.1) and factor(9, 10, 100, 0.1) == 1.0  # warm-up
    assert factor(55, 10, 100, 0.1) == pytest.approx(0.55)  # cosine from the warm-up's end: halfway at 55
    assert factor(60, 10, 100, 0.1, decay_from=60) == 1.0 and factor(40, 10, 100, 0.1, decay_from=60) == 1.0
    assert factor(80, 10, 100, 0.1, decay_from=60) == pytest.approx(0.55)  # halfway through [60, 100]
    assert factor(100, 10, 100, 0.1, decay_from=60) == pytest.approx(0.1) == factor(500, 10, 100, 0.1, decay_from=60)


def test_a_restart_from_weights_alone_warms_the_learning_rate_up_again():
    factor = train.learning_rate_factor
    assert factor(50, 10, 1000, 0.1, warmup_from=50) == pytest.approx(0.1 * factor(50, 10, 1000, 0.1))
    assert factor(54, 10, 1000, 0.1, warmup_from=50) == pytest.approx(0.5 * factor(54, 10, 1000, 0.1))
    assert factor(59, 10, 1000, 0.1, warmup_from=50) == factor(59, 10, 1000, 0.1)  # warmed up: the schedule's own


def test_random_crops_are_on_the_latent_grid():
    images = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    crops = train.random_crops(images, 32, random.Random(0))
    assert crops.shape == (2, 1, 32, 32)
    assert all(int(crop[0, 0, 0]) % 64 % 4 == 0 and int(crop[0, 0, 0]) // 64 % 64 % 4 == 0 for crop in crops)


def test_object_weight_makes_errors_on_the_object_cost_more(tiny_architecture):
    torch.manual_seed(0)
    vae = models.build_vae(tiny_architecture)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1.0
    plain = VaeTrainingConfig(object_weight=0.0)
    weighted = VaeTrainingConfig(object_weight=9.0)
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(images).latent_dist.mean).sample
    on_object = (reconstruction - images).abs()[masks.expand_as(images) > 0].mean().item()
    torch.manual_seed(1)
    _, parts_plain = train.vae_loss(vae, images, plain, decoder_only=True, masks=masks)
    torch.manual_seed(1)
    _, parts_weighted = train.vae_loss(vae, images, weighted, decoder_only=True, masks=masks)
    assert parts_plain["object_l1"] == pytest.approx(on_object, rel=1e-4)
    # with weight 1 + 9 on a quarter of the pixels, the object holds 10/13 of the weighted L1
    whole = (reconstruction - images).abs().mean().item()
    expected = (10 * on_object + 3 * (4 * whole - on_object) / 3) / 13
    assert parts_weighted["l1"] == pytest.approx(expected, rel=1e-4)
    assert parts_plain["l1"] == pytest.approx(whole, rel=1e-4)


def test_anchored_autoencoder_keeps_its_start_scale_and_reports_drift(tmp_path, tiny_architecture):
    torch.manual_seed(0)
    log = train.RunLog(tmp_path)
    start = tmp_path / "start"
    vae = models.build_vae(tiny_architecture)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(start / "vae")
    source = SceneSource(
        make_scene=Scene,
        caption=caption,
        vocabulary=lambda: WORDS,
        masked=masked,
    )
    run = tmp_path / "run"
    run.mkdir()
    config = VaeTrainingConfig(
        batch_size=2, max_steps=2, crop_size=0, object_weight=4.0, anchor_weight=1.0, log_every=1
    )
    with pytest.raises(ValueError, match="--warm-start"):
        train.train_vae(run, source, tiny_architecture, config, False, StopAfter(10), log)
    train.train_vae(run, source, tiny_architecture, config, False, StopAfter(10), log, warm_start=start)
    assert train.load_exported_vae(run).config.scaling_factor == 0.5  # not re-measured: the UNet's scale holds
    records = [line for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"anchor"' in line]
    assert records and '"object_l1"' in records[-1]


def test_a_unet_goes_on_in_an_anchored_autoencoders_latents_only_when_asked(tmp_path, tiny_architecture):
    torch.manual_seed(0)
    log = train.RunLog(tmp_path)
    train.train_tokenizer(tmp_path, SOURCE, TokenizerConfig(vocab_size=600), log)
    train.train_vae(
        tmp_path, SOURCE, tiny_architecture, VaeTrainingConfig(batch_size=2, max_steps=1), False, StopAfter(10), log
    )
    pool = lambda: LatentPool(tmp_path / "latents", train.vae_fingerprint(tmp_path), chunk_size=8)  # noqa: E731
    pool().fill(SOURCE, train.load_exported_vae(tmp_path), train.load_exported_vae(tmp_path).config.scaling_factor, 8)
    config = UnetTrainingConfig(batch_size=2, warmup_steps=1)
    train.UnetTrainer(tmp_path, SOURCE, tiny_architecture, config, log).run(False, StopAfter(1))
    start = tmp_path / "start"
    shutil.copytree(tmp_path / "vae", start / "vae")
    source = SceneSource(SOURCE.make_scene, SOURCE.caption, SOURCE.vocabulary, masked=masked)
    anchored = VaeTrainingConfig(batch_size=2, max_steps=1, crop_size=0, object_weight=1.0, anchor_weight=1.0)
    (tmp_path / "vae.ckpt").unlink()
    train.train_vae(tmp_path, source, tiny_architecture, anchored, False, StopAfter(10), log, warm_start=start)
    shutil.rmtree(tmp_path / "latents")
    pool().fill(SOURCE, train.load_exported_vae(tmp_path), train.load_exported_vae(tmp_path).config.scaling_factor, 8)
    with pytest.raises(ValueError, match="another autoencoder"):
        train.UnetTrainer(tmp_path, SOURCE, tiny_architecture, config, log).run(True, StopAfter(1))
    resumed = train.UnetTrainer(tmp_path, SOURCE, tiny_architecture, config, log)
    resumed.run(True, StopAfter(1), adopt_autoencoder=True)
    assert resumed.step == 2
    assert torch.load(tmp_path / "unet.ckpt", weights_only=False)["vae"] == train.vae_fingerprint(tmp_path)


def masked(seed):
    return Scene(seed).image, Image.new("L", (64, 64), 255)


def test_vae_training_config_refuses_negative_weights_and_off_grid_crops():
    with pytest.raises(ValueError, match="object_weight"):
        VaeTrainingConfig(object_weight=-1)
    with pytest.raises(ValueError, match="crop_size"):
        VaeTrainingConfig(crop_size=30)


def test_training_stages_resume_and_export(tmp_path, tiny_architecture):
    torch.manual_seed(0)
    log = train.RunLog(tmp_path)
    train.train_tokenizer(tmp_path, SOURCE, TokenizerConfig(vocab_size=600), log)
    vae_config = VaeTrainingConfig(batch_size=4, max_steps=2)
    train.train_vae(tmp_path, SOURCE, tiny_architecture, vae_config, False, StopAfter(10), log)
    train.train_vae(
        tmp_path, SOURCE, tiny_architecture, dataclasses.replace(vae_config, max_steps=3), True, StopAfter(10), log
    )
    assert torch.load(tmp_path / "vae.ckpt", weights_only=False)["step"] == 3
    vae = train.load_exported_vae(tmp_path)
    LatentPool(tmp_path / "latents", train.vae_fingerprint(tmp_path), chunk_size=8).fill(
        SOURCE, vae, vae.config.scaling_factor, 16
    )
    config = UnetTrainingConfig(batch_size=4, warmup_steps=2)
    epsilon = dataclasses.replace(
        tiny_architecture, prediction_type="epsilon", zero_terminal_snr=False
    )  # as the first shipped model
    train.UnetTrainer(tmp_path, SOURCE, epsilon, config, log).run(False, StopAfter(2))
    resumed = train.UnetTrainer(
        tmp_path, SOURCE, tiny_architecture, config, log
    )  # switched to v on the zero-terminal-SNR schedule
    resumed.run(True, StopAfter(1))
    assert (resumed.step, resumed.ema_start) == (3, 2)  # the EMA restarted at the switch
    pipe = StableDiffusionPipeline.from_pretrained(export(tmp_path, tmp_path / "model"), local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    assert model_captions(pipe) == world_captions("families")  # C from its world's captions, at its own length
    (tmp_path / "model" / "perfusion_recipe.json").write_text('{"training": {"steps": 7}}')
    export(tmp_path, tmp_path / "model")  # exported again over itself: the weights change, the recipe stays
    assert read_recipe(tmp_path / "model").training == {"steps": 7}
    pipe.scheduler.set_timesteps(2)
    assert pipe.scheduler.timesteps[0] == 999  # sampling starts from pure noise
    image = pipe("a red cup on blue background", num_inference_steps=2, height=64, width=64).images[0]
    assert np.asarray(image).shape == (64, 64, 3)
    fingerprint = train.vae_fingerprint(tmp_path)
    train.train_vae(tmp_path, SOURCE, tiny_architecture, vae_config, False, StopAfter(10), log, decoder_only=True)
    assert train.vae_fingerprint(tmp_path) == fingerprint  # decoder fine-tuning keeps the latent space
    train.UnetTrainer(tmp_path, SOURCE, tiny_architecture, config, log).run(
        True, StopAfter(1)
    )  # so the UNet still resumes

    # With the run directory lost, training continues from the shipped folder: same weights, same step.
    fresh = tmp_path / "fresh-run"
    fresh.mkdir()
    train.adopt_shipped_parts(tmp_path / "model", fresh, log)
    adopted = train.vae_fingerprint(fresh)
    train.train_vae(
        fresh, SOURCE, tiny_architecture, vae_config, True, StopAfter(10), log
    )  # make basemodel's vae stage: a no-op
    assert not (fresh / "vae.ckpt").exists() and train.vae_fingerprint(fresh) == adopted
    LatentPool(fresh / "latents", train.vae_fingerprint(fresh), chunk_size=8).fill(
        SOURCE, train.load_exported_vae(fresh), vae.config.scaling_factor, 8
    )
    continued = train.UnetTrainer(fresh, SOURCE, tiny_architecture, config, log)
    continued.initialise_from(tmp_path / "model")
    assert continued.step == 3 and continued.warmup_from == 3  # Adam starts afresh, so the rate warms up again
    assert train.shipped_info(tmp_path / "model")["config"]["batch_size"] == config.batch_size  # --init-from's schedule
    shipped = StableDiffusionPipeline.from_pretrained(tmp_path / "model", local_files_only=True).unet.state_dict()
    assert all(torch.equal(continued.unet.state_dict()[name], tensor) for name, tensor in shipped.items())
    continued.run(False, StopAfter(1))
    assert continued.step == 4
    assert continued.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * config.unet_learning_rate, rel=0.01)
    cool_down = dataclasses.replace(config, decay_from=4, max_steps=6)  # resumed with a cool-down: stops at its end
    cooled = train.UnetTrainer(fresh, SOURCE, tiny_architecture, cool_down, log)
    cooled.run(True, StopAfter(10))
    assert cooled.step == 6 and cooled.optimizer.param_groups[0]["lr"] < config.unet_learning_rate


def test_shipped_model_loads_and_generates():
    from perfusion.world.model_path import MODEL_DIR, default_model_path

    if not (MODEL_DIR / "model_index.json").exists():
        pytest.skip("the embedded base model has not been exported yet")
    pipe = StableDiffusionPipeline.from_pretrained(default_model_path(), local_files_only=True)
    image = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_committed_families_model_generates_and_can_start_a_new_run(tmp_path):
    """The families weights a new checkout resumes from: a pipeline folder that generates, whose basemodel.json
    holds what --init-from reads (its world, step and architecture)."""
    import json

    from perfusion.world.basemodel.config import saved_architecture
    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    if not (FAMILIES_MODEL_DIR / "model_index.json").exists():
        pytest.skip("no families weights committed yet")
    info = json.loads((FAMILIES_MODEL_DIR / "basemodel.json").read_text())
    assert info["world"] == "families" and info["unet_step"] > 0
    assert saved_architecture(info["arch"]).image_size == 64
    pipe = StableDiffusionPipeline.from_pretrained(FAMILIES_MODEL_DIR, local_files_only=True)
    image = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    run_dir = tmp_path / "new-checkout"
    run_dir.mkdir()
    train.adopt_shipped_parts(FAMILIES_MODEL_DIR, run_dir, lambda message: None)  # what make basemodel does
    config = from_dict(UnetTrainingConfig, train.shipped_info(FAMILIES_MODEL_DIR)["config"])
    trainer = train.UnetTrainer(run_dir, SOURCE, saved_architecture(info["arch"]), config, lambda message: None)
    trainer.initialise_from(FAMILIES_MODEL_DIR)
    assert trainer.step == info["unet_step"] and trainer.warmup_from == info["unet_step"]
    committed = pipe.unet.state_dict()
    assert all(torch.equal(trainer.unet.state_dict()[name], weight.float()) for name, weight in committed.items())


def test_evaluation_scores_true_renders_perfectly():
    from perfusion.world.basemodel.evaluate import prompt_set, score
    from perfusion.world.judge import JUDGE_PATH, Judge
    from perfusion.world.scenes import render

    if not JUDGE_PATH.exists():
        pytest.skip("the judge has not been trained yet")
    specs = [spec for spec, _ in prompt_set(16)]
    hits = score(Judge.load().predict([render(spec) for spec in specs]), specs)
    assert all(all(values) for values in hits.values())  # the judge is exact on renders (its reported accuracy)


def test_autoencoder_round_trip_keeps_size_and_count(tokenizer_dir, tiny_architecture):
    from perfusion.world.basemodel.evaluate import autoencoded

    images = [Image.new("RGB", (64, 64), colour) for colour in COLOURS.values()]
    round_trips = autoencoded(tiny_pipeline(tokenizer_dir, tiny_architecture), images)
    assert len(round_trips) == 2 and all(image.size == (64, 64) and image.mode == "RGB" for image in round_trips)


def test_layout_measures_find_the_object_and_read_the_unet(tmp_path):
    from PIL import Image

    from perfusion.testing import build_tiny_pipeline, load_pipeline
    from perfusion.world.basemodel import layout

    image = Image.new("RGB", (64, 64), "white")
    image.paste((200, 0, 0), (4, 20, 20, 36))  # a red square centred at (11.5, 27.5)
    assert layout.object_centre(image) == pytest.approx((11.5, 27.5))
    assert np.isnan(layout.object_centre(Image.new("RGB", (64, 64), "white"))[0])
    pipe = load_pipeline(build_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction"))
    noise = torch.randn(
        4, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size, generator=torch.Generator().manual_seed(0)
    )
    x0 = layout.predicted_x0(pipe, "a photo of a cat", noise)
    with torch.no_grad():  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v at the last timestep
        ids = pipe.tokenizer(
            ["a photo of a cat"], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        v = pipe.unet(noise, torch.full((4,), 999), pipe.text_encoder(ids)[0].expand(4, -1, -1)).sample
    abar = pipe.scheduler.alphas_cumprod[999]
    assert torch.allclose(x0, abar.sqrt() * noise - (1 - abar).sqrt() * v, atol=1e-5)
    assert layout.middle_block_x_probe(pipe, noise, "a photo of a cat") <= 1.0


def test_world_source_can_state_position_in_every_caption():
    from perfusion.world.basemodel.data import world_source
    from perfusion.world.captions import POSITION_PHRASES
    from perfusion.world.scenes import sample_spec

    rng = random.Random(0)
    specs = [spec for spec in (sample_spec(rng) for _ in range(60)) if spec.second_object is None]
    always, default = world_source(state_position=1.0), world_source()
    phrases = {spec: POSITION_PHRASES[spec.position] for spec in specs}

    def stated(source):  # captions naming the object's position ("a photo of X" with no attribute aside)
        captions = [source.caption(spec, random.Random(i)) for i, spec in enumerate(specs)]
        return [any(p in text for p in phrases[spec]) for spec, text in zip(specs, captions)]

    assert sum(stated(always)) >= 0.85 * len(specs) > sum(stated(default))


def test_world_source_can_name_every_object_by_its_category():
    from perfusion.world.basemodel.data import world_source
    from perfusion.world.catalog import world_object
    from perfusion.world.scenes import sample_spec

    rng = random.Random(0)
    specs = [sample_spec(rng) for _ in range(40)]
    source = world_source(category_word=1.0)
    for index, spec in enumerate(specs):
        text = source.caption(spec, random.Random(index))
        assert spec.object not in text or spec.object == world_object(spec.object).category
        assert f" {world_object(spec.object).category}" in f" {text}"


def test_families_source_can_name_the_pattern_more_often():
    import re

    from perfusion.world.basemodel.data import families_source
    from perfusion.world.families.scenes import sample_spec

    rng = random.Random(0)
    specs = [spec for spec in (sample_spec(rng) for _ in range(200)) if spec.instances[0].pattern != "plain"]
    pattern_words = re.compile(r"\b(striped|stripes|spotted|spots|patched|patches|banded|band)\b")

    def named(source):  # captions that name a pattern, over 3 wordings of each patterned scene
        texts = [source.caption(spec, random.Random(i * 3 + k)) for i, spec in enumerate(specs) for k in range(3)]
        return sum(bool(pattern_words.search(text)) for text in texts) / len(texts)

    often, default = named(families_source(pattern_word=0.9)), named(families_source())
    assert often > default + 0.3  # 0.9 against the world's 0.45 (a second object's pattern may be named too)


def test_unet_batches_can_draw_more_two_object_scenes(tmp_path, tiny_architecture):
    from perfusion.world.basemodel.data import world_source
    from perfusion.world.model_path import MODEL_DIR
    from perfusion.world.scenes import sample_spec

    if not (MODEL_DIR / "tokenizer").exists():
        pytest.skip("the embedded model's tokenizer is not shipped")
    shutil.copytree(MODEL_DIR / "tokenizer", tmp_path / "tokenizer")
    rng = random.Random(0)
    specs = [sample_spec(rng) for _ in range(200)]
    latents = torch.zeros(len(specs), 1)
    drawn = {}
    for share in (0.0, 0.75):
        config = UnetTrainingConfig(batch_size=32, two_object_share=share)
        trainer = train.UnetTrainer(tmp_path, world_source(), tiny_architecture, config, lambda message: None)
        batches = [trainer.batch(latents, specs)[2] for _ in range(10)]
        drawn[share] = sum(spec.second_object is not None for batch in batches for spec in batch) / 320
    pool_share = sum(spec.second_object is not None for spec in specs) / len(specs)
    assert abs(drawn[0.0] - pool_share) < 0.1
    assert drawn[0.75] >= 0.75


def test_unet_training_config_refuses_an_unknown_mixed_precision():
    with pytest.raises(ValueError, match="mixed_precision"):
        UnetTrainingConfig(mixed_precision="fp8")


def shipped_tokenizer_run(run_dir, count: int, architecture):
    """A UNet run directory with the embedded model's tokenizer, and ``count`` scene specs of its world with random
    latents of the tiny architecture (skipped where the tokenizer is not shipped)."""
    from perfusion.world.model_path import MODEL_DIR
    from perfusion.world.scenes import sample_spec

    if not (MODEL_DIR / "tokenizer").exists():
        pytest.skip("the embedded model's tokenizer is not shipped")
    shutil.copytree(MODEL_DIR / "tokenizer", run_dir / "tokenizer")
    rng = random.Random(0)
    specs = [sample_spec(rng) for _ in range(count)]
    side = models.latent_size(architecture)
    return specs, torch.randn(count, architecture.latent_channels, side, side)


def test_a_bf16_autocast_step_reads_the_same_losses_as_fp32(tmp_path, tiny_architecture):
    """bfloat16 forward passes (fp32 weights and loss): the first step's losses, diffusion and grounding, within 5%
    of fp32's from the same weights, noise and timesteps, and not equal to them (bf16 did run)."""
    from perfusion.world.basemodel.data import world_source

    specs, latents = shipped_tokenizer_run(tmp_path, 4, tiny_architecture)
    losses = {}
    for precision in ("no", "bf16"):
        torch.manual_seed(0)
        config = UnetTrainingConfig(
            batch_size=4, mixed_precision=precision, grounding_weight=0.3, grounding_pixel_weight=0.1
        )
        trainer = train.UnetTrainer(tmp_path, world_source(), tiny_architecture, config, lambda message: None)
        captions = [trainer.source.caption(spec, random.Random(index)) for index, spec in enumerate(specs)]
        losses[precision] = trainer.training_step(latents, captions, specs)
    assert set(losses["bf16"]) == {"loss", "grounding", "pixel"}
    assert losses["bf16"]["loss"] != losses["no"]["loss"]  # the forward pass did run in bfloat16
    for name, value in losses["no"].items():
        assert losses["bf16"][name] == pytest.approx(value, rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path, tiny_architecture):
    """One bf16 step on the GPU, saved; the CPU trainer loads it: same step, same weights."""
    from perfusion.world.basemodel.data import world_source

    specs, latents = shipped_tokenizer_run(tmp_path, 2, tiny_architecture)
    models.build_vae(tiny_architecture).save_pretrained(
        tmp_path / "vae"
    )  # the checkpoint records the autoencoder's fingerprint
    config = UnetTrainingConfig(batch_size=2, mixed_precision="bf16", grounding_weight=0.3)
    gpu = train.UnetTrainer(tmp_path, world_source(), tiny_architecture, config, lambda message: None, device="cuda")
    captions = [gpu.source.caption(spec, random.Random(0)) for spec in specs]
    gpu.training_step(latents, captions, specs)
    gpu.save()
    cpu = train.UnetTrainer(tmp_path, world_source(), tiny_architecture, config, lambda message: None)
    cpu.load(torch.load(tmp_path / "unet.ckpt", weights_only=False, map_location="cpu"))
    assert cpu.step == 1
    assert all(torch.equal(weight.cpu(), cpu.unet.state_dict()[name]) for name, weight in gpu.unet.state_dict().items())
    cpu.training_step(latents, captions, specs)  # and goes on there


def test_a_tokenizer_adopted_from_a_shipped_folder_is_kept_not_trained_again(tmp_path):
    """A shipped pipeline folder holds only tokenizer.json (what save_pretrained writes): a run adopting it (make
    basemodel on a new checkout, --init-from) must keep its token ids, which the text encoder's rows were trained
    with; training a tokenizer again orders tied merges differently (a bug that scrambled 286 ids, 202 of them
    whole words such as "dog" and "white")."""
    from perfusion.world.model_path import FAMILIES_MODEL_DIR

    train.adopt_shipped_parts(FAMILIES_MODEL_DIR, tmp_path, lambda message: None)
    shipped = (tmp_path / "tokenizer" / "tokenizer.json").read_bytes()
    tokenizer = train.train_tokenizer(tmp_path, SOURCE, TokenizerConfig(), lambda message: None)
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() == shipped
    assert tokenizer.get_vocab() == CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer").get_vocab()
