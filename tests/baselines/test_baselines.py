"""Baselines on a tiny pipeline: what each trains, what it leaves alone, what it ships, and how it loads back."""

import time

import pytest
import torch

from perfusion import baselines
from perfusion.baselines.measure import run_isolated
from perfusion.testing import load_pipeline, write_concept_images
from perfusion.training.images import load_training_images

TOKEN, SUPERCATEGORY = "<mydisc>", "cat"
QUICK = dict(steps=3, batch_size=1, gradient_accumulation=1, num_class_images=2, class_inference_steps=2)
VARIANTS = {  # name -> (method, config overrides)
    "textual-inversion": ("textual-inversion", {}),
    "dreambooth": ("dreambooth", {}),
    "lora-r4": ("lora", {"rank": 4}),
    "lora-r16": ("lora", {"rank": 16}),
    "custom-diffusion": ("custom-diffusion", {}),
}


def weights(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": tensor.detach().clone()
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(pipe, part).state_dict().items()
    }


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir, tmp_path_factory):
    """Each variant trained once for 3 steps on its own fresh pipeline and saved; the pipeline kept for checks."""
    folder = tmp_path_factory.mktemp("baselines")
    images = load_training_images(write_concept_images(folder / "disc", count=2))
    runs = {}
    for variant, (name, overrides) in VARIANTS.items():
        module = baselines.method(name)
        pipe = load_pipeline(tiny_pipeline_dir)
        before = weights(pipe)
        result = module.train(pipe, images, TOKEN, SUPERCATEGORY, module.CONFIG(**QUICK, **overrides), progress=False)
        baselines.save(result, folder / f"{variant}.safetensors")
        runs[variant] = dict(module=module, pipe=pipe, before=before, result=result)
    return runs


def applied(run, tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir)
    return pipe, run["module"].apply(pipe, run["result"].path)


def embedding_key(base: dict) -> str:
    (name,) = [name for name in base if name.startswith("text_encoder.") and name.endswith("token_embedding.weight")]
    return name


def changed(base: dict, pipe) -> set[str]:
    after = weights(pipe)
    return {name for name in after if name not in base or not torch.equal(after[name], base[name])}


def image(pipe, prompt: str, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        prompt, num_inference_steps=2, height=16, width=16, generator=generator, output_type="np", **kwargs
    ).images


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_leaves_the_pipeline_as_it_was(trained, variant):
    run = trained[variant]
    pipe, result = run["pipe"], run["result"]
    assert changed(run["before"], pipe) == set() and weights(pipe).keys() == run["before"].keys()
    assert TOKEN not in pipe.tokenizer.get_vocab()
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert all(p.requires_grad and p.grad is None for p in part.parameters())  # trainable, as loaded
    assert not any("lora" in name for name in pipe.unet.state_dict())  # peft layers unloaded
    assert not any("CustomDiffusion" in type(p).__name__ for p in pipe.unet.attn_processors.values())
    assert len(result.losses) == result.steps == 3 and all(loss > 0 for loss in result.losses)
    assert result.size_bytes == result.path.stat().st_size


def test_textual_inversion_ships_one_trained_row(trained, tiny_pipeline_dir):
    run = trained["textual-inversion"]
    tensors = run["result"].tensors
    assert list(tensors) == [TOKEN]
    pipe, handle = applied(run, tiny_pipeline_dir)
    token_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert changed(run["before"], pipe) == {embedding_key(run["before"])}
    old_rows = run["before"][embedding_key(run["before"])]
    assert torch.equal(rows[: len(old_rows)], old_rows)  # every existing row as it was; one new row
    assert rows.shape[0] == len(old_rows) + 1 and torch.equal(rows[token_id], tensors[TOKEN])
    word = pipe.tokenizer(SUPERCATEGORY, add_special_tokens=False).input_ids
    assert not torch.allclose(tensors[TOKEN], old_rows[word].mean(0))  # moved from its initializer
    assert handle.prompt(f"a photo of a {TOKEN}") == f"a photo of a {TOKEN}"
    assert image(pipe, handle.prompt(f"a photo of a {TOKEN}")).shape == (1, 16, 16, 3)


def test_dreambooth_ships_the_whole_unet_and_changes_only_it(trained, tiny_pipeline_dir):
    run = trained["dreambooth"]
    pipe, handle = applied(run, tiny_pipeline_dir)
    assert set(run["result"].tensors) == set(pipe.unet.state_dict())
    moved = changed(run["before"], pipe)
    assert moved and all(name.startswith("unet.") for name in moved)
    assert handle.prompt(f"a photo of a {TOKEN}") == f"a photo of a sks {SUPERCATEGORY}"
    assert image(pipe, handle.prompt(f"a photo of a {TOKEN}")).shape == (1, 16, 16, 3)


@pytest.mark.parametrize("variant", ["lora-r4", "lora-r16"])
def test_lora_trains_only_adapters_of_the_attention_projections(trained, tiny_pipeline_dir, variant):
    run = trained[variant]
    tensors = run["result"].tensors
    projections = {name.split(".lora")[0].rsplit(".", 1)[-1] for name in tensors}
    assert all(name.startswith("unet.") and ".lora" in name for name in tensors)
    assert projections == {"to_q", "to_k", "to_v", "0"}  # to_out.0 ends in "0"
    ups = [tensor for name, tensor in tensors.items() if "lora_B" in name or "lora.up" in name]
    assert ups and all(tensor.abs().sum() > 0 for tensor in ups)  # B starts at zero: every adapter trained
    pipe, handle = applied(run, tiny_pipeline_dir)
    plain = {name.replace(".base_layer", ""): tensor for name, tensor in weights(pipe).items() if "lora" not in name}
    assert plain.keys() == run["before"].keys() and all(torch.equal(plain[k], run["before"][k]) for k in plain)
    prompt = handle.prompt(f"a photo of a {TOKEN}")
    handle.set_strength(0.0)
    off = image(pipe, prompt)
    handle.set_strength(1.0)
    on = image(pipe, prompt)
    stock = image(load_pipeline(tiny_pipeline_dir), prompt)
    assert torch.allclose(torch.from_numpy(off), torch.from_numpy(stock), atol=1e-6)  # scale 0 is the base model
    assert not torch.allclose(torch.from_numpy(on), torch.from_numpy(stock), atol=1e-6)


def test_custom_diffusion_trains_cross_attention_kv_and_the_token(trained, tiny_pipeline_dir):
    run = trained["custom-diffusion"]
    tensors = run["result"].tensors
    layers = [name for name in run["before"] if name.startswith("unet.") and ".attn2.to_k." in name]
    expected = {
        f"{name[len('unet.') :].replace('.to_k.weight', '')}.processor.{p}_custom_diffusion.weight"
        for name in layers
        for p in ("to_k", "to_v")
    }
    assert set(tensors) == expected | {TOKEN}
    for key in expected:  # every K and V moved from the base weight it started at
        base_name = "unet." + key.replace(".processor.", ".").replace("_custom_diffusion", "")
        assert not torch.equal(tensors[key], run["before"][base_name]), key
    pipe, handle = applied(run, tiny_pipeline_dir)
    moved = changed(run["before"], pipe)  # the processors are submodules: their weights are new UNet keys
    assert moved == {embedding_key(run["before"])} | {f"unet.{key}" for key in expected}
    prompt = handle.prompt(f"a photo of a {TOKEN}")
    assert prompt == f"a photo of a {TOKEN} {SUPERCATEGORY}"
    stock = torch.from_numpy(image(load_pipeline(tiny_pipeline_dir), f"a photo of a {SUPERCATEGORY}"))
    handle.set_strength(0.0)  # base K/V: a prompt without the token is the base model's image
    assert torch.allclose(torch.from_numpy(image(pipe, f"a photo of a {SUPERCATEGORY}")), stock, atol=1e-5)
    handle.set_strength(1.0)
    assert not torch.allclose(torch.from_numpy(image(pipe, f"a photo of a {SUPERCATEGORY}")), stock, atol=1e-5)
    assert image(pipe, prompt).shape == (1, 16, 16, 3)


def test_artifact_sizes_are_ordered(trained):
    size = {variant: run["result"].size_bytes for variant, run in trained.items()}
    assert size["textual-inversion"] < size["custom-diffusion"] < size["dreambooth"], size
    assert size["lora-r4"] < size["lora-r16"], size


def test_an_artifact_of_another_method_is_refused(trained, tiny_pipeline_dir):
    with pytest.raises(baselines.BaselineError, match="not a lora artifact"):
        baselines.lora.apply(load_pipeline(tiny_pipeline_dir), trained["dreambooth"]["result"].path)


def test_prior_preservation_images_come_from_the_base_model_and_masks_are_optional(tiny_pipe, tmp_path):
    from perfusion.baselines.dreambooth import DreamBoothTrainer

    with_alpha = load_training_images(write_concept_images(tmp_path / "alpha", count=2))
    trainer = DreamBoothTrainer(
        tiny_pipe, with_alpha, TOKEN, SUPERCATEGORY, baselines.dreambooth.CONFIG(**QUICK, use_masks=True)
    )
    assert trainer.class_bank.means.shape == (2, 4, 8, 8) and torch.all(trainer.class_bank.stds == 0)
    assert trainer.bank.masks.shape == (4, 1, 8, 8) and 0 < trainer.bank.masks.mean() < 1  # images and mirrors
    plain = load_training_images(write_concept_images(tmp_path / "plain", count=2, alpha=False))
    with pytest.raises(baselines.BaselineError, match="use_masks needs a mask"):
        DreamBoothTrainer(tiny_pipe, plain, TOKEN, SUPERCATEGORY, baselines.dreambooth.CONFIG(**QUICK, use_masks=True))


def test_training_time_counts_the_class_images(tiny_pipe, tmp_path, monkeypatch):
    """The set-up (class images, latents) is part of what a user waits for: a slow one shows in the seconds."""
    from perfusion.baselines import training

    made = training.class_latent_bank

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return made(*args, **kwargs)

    monkeypatch.setattr(training, "class_latent_bank", slow)
    images = load_training_images(write_concept_images(tmp_path / "disc", count=2))
    result = baselines.dreambooth.train(
        tiny_pipe, images, TOKEN, SUPERCATEGORY, baselines.dreambooth.CONFIG(**QUICK), progress=False
    )
    assert result.seconds >= 1.0


def test_peak_memory_is_measured_in_a_fresh_process():
    measured = run_isolated(eval, "len(bytearray(300_000_000))")
    assert measured.value == 300_000_000
    assert measured.peak_rss_bytes >= 300_000_000 and measured.peak_gpu_bytes is None


def test_the_comparison_runs_methods_and_ablations_by_default_and_only_the_methods_when_quick(benchmark_script):
    compare = benchmark_script("compare")
    full = [variant.name for variant in compare.chosen_variants(None, quick=False)]
    quick = [variant.name for variant in compare.chosen_variants(None, quick=True)]
    assert quick == ["perfusion", "textual-inversion", "dreambooth", "lora-r4", "lora-r16", "custom-diffusion"]
    assert set(quick) < set(full) and "perfusion-no-pairs" in full and "perfusion-3e-3" not in full
    assert {variant.method for variant in compare.chosen_variants(None, quick=True)} == {
        variant.method for variant in compare.VARIANTS
    }  # every method is in the quick run
    named = compare.chosen_variants(["perfusion-3e-3", "lora-r4"], quick=True)
    assert [variant.name for variant in named] == ["perfusion-3e-3", "lora-r4"]  # names win over the mode


def test_every_baseline_makes_its_class_images_at_the_runs_guidance_and_scales_go_past_one(benchmark_script):
    compare = benchmark_script("compare")
    settings = compare.RunSettings(model="m", out="o", guidance=2.5)
    by_name = {variant.name: variant for variant in compare.VARIANTS}
    for name in ("dreambooth", "custom-diffusion", "lora-r4", "textual-inversion"):
        assert compare.training_settings(by_name[name], settings)["class_guidance"] == 2.5
    assert "class_guidance" not in compare.training_settings(by_name["perfusion"], settings)
    assert max(by_name["custom-diffusion"].sweep) > 1.0 and max(by_name["lora-r4"].sweep) > 1.0


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # two LoRAs in one UNet, on purpose (composition)
def test_the_comparison_runs_end_to_end_on_a_tiny_pipeline(tiny_pipeline_dir, tmp_path, benchmark_script, monkeypatch):
    import json

    compare = benchmark_script("compare")
    for name, supercategory in (("mydisc", SUPERCATEGORY), ("myring", "cup")):
        concept = write_concept_images(tmp_path / "concepts" / name, count=2)
        (concept / "concept.json").write_text(json.dumps({"token": f"<{name}>", "supercategory": supercategory}))
    out = tmp_path / "out"
    rows, compositions = compare.main(
        [
            "--model",
            str(tiny_pipeline_dir),
            "--concepts",
            str(tmp_path / "concepts"),
            "--out",
            str(out),
            "--quick",
            "--steps",
            "2",
            "--prompts",
            "1",
            "--inference-steps",
            "2",
            "--no-isolate",
            "--variants",
            "perfusion",
            "lora-r4",
            "--concept",
            "mydisc",
            "myring",
        ]
    )
    assert [(row.concept, row.variant) for row in rows] == [
        (concept, variant) for concept in ("mydisc", "myring") for variant in ("perfusion", "lora-r4")
    ]
    assert all(row.size_bytes > 0 and len(row.sweep) == 3 for row in rows)
    assert rows[0].size_bytes < rows[1].size_bytes
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 5 and (out / "sweep.csv").exists() and (out / "pareto_mydisc.png").stat().st_size > 0
    assert sorted(path.name for path in (out / "sheets").glob("*.png")) == [  # the images behind every row
        f"{concept}-{variant}.png" for concept in ("mydisc", "myring") for variant in ("lora-r4", "perfusion")
    ]
    assert [(row["pair"], row["variant"], row["images"]) for row in compositions] == [
        ("mydisc+myring", "perfusion", 2),
        ("mydisc+myring", "lora-r4", 2),
    ]  # unscored: no judge for these concepts
    assert [row["composition"] for row in compositions] == ["regions", ""]  # the recipe's mode, for Perfusion only
    assert (out / "composition.csv").exists()
    # one prompt gives each knob's slope but no noise estimate across prompts
    assert [(t["metric"], t["verdict"]) for t in rows[1].trends] == [
        ("fidelity", "unmeasured"),
        ("alignment", "unmeasured"),
    ]
    assert len((out / "trends.csv").read_text().splitlines()) == 1 + 2 * 4

    # --update redoes one row and keeps the others (and the compositions), each with the command that measured it
    redo = [
        "--model",
        str(tiny_pipeline_dir),
        "--concepts",
        str(tmp_path / "concepts"),
        "--out",
        str(out),
        "--quick",
        "--steps",
        "2",
        "--prompts",
        "1",
        "--inference-steps",
        "2",
        "--no-isolate",
        "--variants",
        "perfusion",
        "--concept",
        "myring",
        "--update",
    ]
    updated, kept = compare.main(redo)
    assert [(row.concept, row.variant) for row in updated] == [(row.concept, row.variant) for row in rows]
    assert [row.command.endswith("--update") for row in updated] == [False, False, True, False]
    # the composition of the retrained <myring> is dropped (it measured the old artifact); the LoRA one is kept
    assert list(map(compare.composition_key, kept)) == [("mydisc+myring", "lora-r4")]
    assert len((out / "table.csv").read_text().splitlines()) == 5
    assert json.loads((out / "results.json").read_text())["rows"][2]["command"] == updated[2].command
    with pytest.raises(SystemExit, match="other prompts"):  # rows measured on other prompts are not mixed in
        compare.main([*redo, "--prompts", "2"])

    # --compositions-only redoes the two-concept images from the concept files in --out and keeps every row
    again = [*redo[:-3], "--concept", "mydisc", "myring", "--compositions-only", "--composition", "joint"]
    kept_rows, redone = compare.main(again)
    assert [row.command for row in kept_rows] == [row.command for row in updated]
    assert [(row["variant"], row["composition"]) for row in redone] == [("perfusion", "joint"), ("lora-r4", "")]
    assert "joint" in (out / "composition.csv").read_text()
    (out / "artifacts" / "myring-perfusion.safetensors").unlink()
    with pytest.raises(SystemExit, match="myring-perfusion.safetensors to compose"):
        compare.main(again)

    # --resume does only what a stopped run left undone: here one row and the composition it is part of; Perfusion's
    # composition is kept only in the mode it was made in
    results = json.loads((out / "results.json").read_text())
    results["rows"] = [row for row in results["rows"] if (row["concept"], row["variant"]) != ("myring", "lora-r4")]
    results["composition"] = [row for row in results["composition"] if row["variant"] != "lora-r4"]
    (out / "results.json").write_text(json.dumps(results))
    trained, train = [], compare.train
    monkeypatch.setattr(
        compare,
        "train",
        lambda model, concept, variant, *rest: (
            trained.append((concept.name, variant.name)) or train(model, concept, variant, *rest)
        ),
    )
    composing, compose = [], compare.composition_images
    monkeypatch.setattr(
        compare,
        "composition_images",
        lambda model, pair, variant, *rest: composing.append(variant.name) or compose(model, pair, variant, *rest),
    )
    resume = [*redo[:-5], "--variants", "perfusion", "lora-r4", "--concept", "mydisc", "myring", "--resume"]
    resumed, composed = compare.main([*resume, "--composition", "joint"])
    assert trained == [("myring", "lora-r4")] and composing == ["lora-r4"]
    assert [(row.concept, row.variant) for row in resumed] == [(row.concept, row.variant) for row in rows]
    assert [row["variant"] for row in composed] == ["perfusion", "lora-r4"]
    cost = json.loads((out / "results.json").read_text())["seconds"]  # the rows kept and the ones done now
    assert cost == pytest.approx(sum(row.seconds for row in resumed) + sum(row["seconds"] for row in composed))
    assert all(row.seconds > row.train_seconds for row in resumed)
    with pytest.raises(SystemExit, match="myring-perfusion.safetensors to compose"):  # another mode: made again
        compare.main([*resume, "--composition", "regions"])
    assert [row.tuned for row in resumed] == [False] * 4 and "tuned" in (out / "table.csv").read_text().splitlines()[0]
