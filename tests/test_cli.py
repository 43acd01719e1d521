"""The command line: train, generate, inspect, and one clear line for every bad input."""

import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from perfusion.cli import main
from perfusion.concept.format import Concept
from perfusion.testing import build_tiny_pipeline, handmade_concept, load_pipeline, small_corpus, write_concept_images


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(small_corpus()))
    return path


@pytest.fixture
def concept_file(tiny_pipeline_dir, tmp_path):
    return handmade_concept(load_pipeline(tiny_pipeline_dir)).save(tmp_path / "mycat.safetensors")


def run(argv, capsys):
    code = main([str(part) for part in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_refusal(argv, capsys, message):
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("perfusion: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def train_args(model, images, out, captions, *extra):
    return [
        "train",
        "--model",
        model,
        "--images",
        images,
        "--token",
        "<mydisc>",
        "--supercategory",
        "cat",
        "--out",
        out,
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--gradient-accumulation",
        "1",
        "--captions",
        captions,
        "--quiet",
        *extra,
    ]


def test_train_then_inspect_then_generate(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    images = write_concept_images(tmp_path / "disc")
    out = tmp_path / "disc.safetensors"
    code, stdout, _ = run(train_args(tiny_pipeline_dir, images, out, captions_file), capsys)
    assert code == 0 and out.exists() and "KB" in stdout
    assert not (tmp_path / "disc.safetensors.ckpt").exists()

    code, stdout, _ = run(["inspect", out], capsys)
    assert code == 0 and "<mydisc>" in stdout and "cat" in stdout and "layers" in stdout

    code, stdout, _ = run(
        [
            "generate",
            "--model",
            tiny_pipeline_dir,
            "--concept",
            out,
            "--prompt",
            "a photo of a <mydisc>",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--out",
            tmp_path / "gen",
            "--captions",
            captions_file,
        ],
        capsys,
    )
    written = sorted((tmp_path / "gen").glob("*.png"))
    assert code == 0 and len(written) == 2 and Image.open(written[0]).size == (16, 16)


def test_bad_training_inputs(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    out = tmp_path / "x.safetensors"
    expect_refusal(train_args(tiny_pipeline_dir, tmp_path / "absent", out, captions_file), capsys, "no such directory")
    (tmp_path / "empty").mkdir()
    expect_refusal(train_args(tiny_pipeline_dir, tmp_path / "empty", out, captions_file), capsys, "no images")
    broken = write_concept_images(tmp_path / "broken")
    (broken / "99.png").write_bytes(b"not a png")
    expect_refusal(train_args(tiny_pipeline_dir, broken, out, captions_file), capsys, "99.png: not a readable image")
    images = write_concept_images(tmp_path / "good")
    expect_refusal(train_args(tmp_path, images, out, captions_file), capsys, "not a diffusers pipeline folder")
    expect_refusal(
        train_args(tiny_pipeline_dir, images, out, captions_file, "--mask-dir", tmp_path / "empty"),
        capsys,
        "no mask for 00.png",
    )
    out.write_text("precious")
    expect_refusal(train_args(tiny_pipeline_dir, images, out, captions_file), capsys, "exists (use --force")
    assert out.read_text() == "precious"


def test_half_precision_with_mask_files_and_resume(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    images = write_concept_images(tmp_path / "disc", alpha=False)
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted(images.glob("*.png")):
        Image.new("L", (16, 16), 255).save(masks / path.name)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    assert run(train_args(tiny_pipeline_dir, images, full, captions_file, "--mask-dir", masks), capsys)[0] == 0
    assert (
        run(train_args(tiny_pipeline_dir, images, half, captions_file, "--mask-dir", masks, "--half"), capsys)[0] == 0
    )
    with safe_open(
        str(half), framework="pt"
    ) as handle:  # tiny tensors: the metadata dominates the size, so read dtypes
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {torch.float16}
    assert Concept.load(half).token == Concept.load(full).token == "<mydisc>"
    # --resume with no checkpoint beside OUT is a mistake, not a silent fresh start.
    expect_refusal(
        train_args(tiny_pipeline_dir, images, tmp_path / "new.safetensors", captions_file, "--resume"),
        capsys,
        "no checkpoint to resume from",
    )
    # A run killed after writing OUT and removing its checkpoint has finished: --resume says so and leaves OUT alone.
    written = full.read_bytes()
    code, stdout, _ = run(
        train_args(tiny_pipeline_dir, images, full, captions_file, "--resume", "--mask-dir", masks), capsys
    )
    assert code == 0 and "finished already" in stdout and full.read_bytes() == written
    other = train_args(tiny_pipeline_dir, images, full, captions_file, "--resume", "--mask-dir", masks)
    other[other.index("--supercategory") + 1] = "dog"  # the same token trained as something else is another run
    expect_refusal(other, capsys, "a finished run with other settings (supercategory 'cat', not 'dog')")
    expect_refusal(
        train_args(tiny_pipeline_dir, images, full, captions_file, "--resume", "--mask-dir", masks, "--seed", "1"),
        capsys,
        "a finished run with other settings (seed 0, not 1)",
    )
    assert full.read_bytes() == written
    (tmp_path / "other.safetensors").write_text("precious")  # not a concept file of this token: still a mistake
    expect_refusal(
        train_args(tiny_pipeline_dir, images, tmp_path / "other.safetensors", captions_file, "--resume"),
        capsys,
        "no checkpoint to resume from",
    )
    assert (tmp_path / "other.safetensors").read_text() == "precious"
    (tmp_path / "bad.safetensors.ckpt").write_bytes(b"torn")
    expect_refusal(
        train_args(tiny_pipeline_dir, images, tmp_path / "bad.safetensors", captions_file, "--resume"),
        capsys,
        "unreadable checkpoint",
    )


def test_two_concepts_each_in_its_own_region(tiny_pipeline_dir, tmp_path, concept_file, captions_file, capsys):
    mug = handmade_concept(load_pipeline(tiny_pipeline_dir), "<mymug>", "mug", seed=2)
    mug = mug.save(tmp_path / "mymug.safetensors")
    code, stdout, _ = run(
        [
            "generate",
            "--model",
            tiny_pipeline_dir,
            "--concept",
            concept_file,
            "--concept",
            mug,
            "--prompt",
            "a <mycat> next to a <mymug>",
            "--composition",
            "regions",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--out",
            tmp_path / "gen",
            "--captions",
            captions_file,
        ],
        capsys,
    )
    assert code == 0 and len(sorted((tmp_path / "gen").glob("*.png"))) == 2 == len(stdout.split())


def test_bad_generation_inputs(tiny_pipeline_dir, tmp_path, concept_file, captions_file, capsys):
    base = [
        "generate",
        "--model",
        tiny_pipeline_dir,
        "--steps",
        "1",
        "--out",
        tmp_path / "gen",
        "--captions",
        captions_file,
    ]
    expect_refusal([*base, "--concept", concept_file, "--prompt", "a <mydog>"], capsys, "unknown token <mydog>")
    expect_refusal(
        [*base, "--concept", concept_file, "--prompt", "a <mycat>", "--beta", "1.5"], capsys, "beta must be in"
    )
    expect_refusal([*base, "--concept", concept_file, "--prompt", "a <mycat>", "--tau", "0"], capsys, "tau must be in")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    expect_refusal([*base, "--concept", corrupt, "--prompt", "a <mycat>"], capsys, "not a readable safetensors")
    expect_refusal(["inspect", tmp_path / "absent.safetensors"], capsys, "no such concept file")
    assert not (tmp_path / "gen").exists()


def test_concept_from_another_base_model_is_refused(tmp_path, concept_file, captions_file, capsys):
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    expect_refusal(
        [
            "generate",
            "--model",
            other,
            "--concept",
            concept_file,
            "--prompt",
            "a <mycat>",
            "--steps",
            "1",
            "--out",
            tmp_path / "gen",
            "--captions",
            captions_file,
        ],
        capsys,
        "another base model",
    )


def test_existing_images_are_kept_without_force(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    argv = ["generate", "--model", tiny_pipeline_dir, "--prompt", "a cat", "--steps", "1", "--out", tmp_path]
    assert run(argv, capsys)[0] == 0
    expect_refusal(argv, capsys, "exists (use --force")
    assert run([*argv, "--force"], capsys)[0] == 0


def test_console_script_reports_one_line_and_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "perfusion.cli", "inspect", str(tmp_path / "nope.safetensors")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"perfusion: error: {tmp_path / 'nope.safetensors'}: no such concept file"
    ]


def test_paired_training_from_the_command_line(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    images = write_concept_images(tmp_path / "disc")
    out = tmp_path / "disc.safetensors"
    code, _, _ = run(train_args(tiny_pipeline_dir, images, out, captions_file, "--pair-words", "dog", "cup"), capsys)
    training = Concept.load(out).training
    assert code == 0 and training["pair_probability"] == 0.5 and list(training["pair_words"]) == ["dog", "cup"]
    other = tmp_path / "other.safetensors"
    expect_refusal(
        train_args(tiny_pipeline_dir, images, other, captions_file, "--pair-probability", "0.3"),
        capsys,
        "need at least one word in pair_words",
    )
    too_many = ["--pair-words", "dog", "--pair-probability", "2"]
    expect_refusal(train_args(tiny_pipeline_dir, images, other, captions_file, *too_many), capsys, "must lie in [0, 1]")
    assert not other.exists()


def test_photos_without_masks_train_without_pairs_and_say_so(tiny_pipeline_dir, tmp_path, captions_file, capsys):
    """A user with only photos: the model's attention masks stand in, and paired images (cut out along the objects'
    masks) are switched off with one warning line, instead of the run failing."""
    plain = write_concept_images(tmp_path / "plain", alpha=False)
    out = tmp_path / "plain.safetensors"
    code, _, err = run(train_args(tiny_pipeline_dir, plain, out, captions_file, "--pair-words", "dog"), capsys)
    training = Concept.load(out).training
    assert code == 0 and training["mask"] == "attention" and training["paired"] is False
    warning_lines = [line for line in err.splitlines() if line.startswith("perfusion: warning:")]
    assert len(warning_lines) == 1 and "no masks" in warning_lines[0]


@pytest.fixture
def model_with_recipe(tiny_pipeline_dir, tmp_path):
    """The tiny pipeline with a Perfusion recipe of its own in its folder."""
    import json
    import shutil

    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    recipe = {
        "training": {"steps": 2, "batch_size": 2, "gradient_accumulation": 1, "lr_embedding": 1e-4},
        "generation": {"guidance_scale": 2.5},
    }
    (folder / "perfusion_recipe.json").write_text(json.dumps(recipe))
    return folder


def test_train_takes_the_models_own_recipe_and_flags_override_it(model_with_recipe, tmp_path, captions_file, capsys):
    images = write_concept_images(tmp_path / "disc")
    base = [
        "train",
        "--model",
        model_with_recipe,
        "--images",
        images,
        "--token",
        "<mydisc>",
        "--supercategory",
        "cat",
        "--captions",
        captions_file,
        "--quiet",
    ]
    code, _, err = run([*base, "--out", tmp_path / "a.safetensors"], capsys)
    assert code == 0, err
    settings = Concept.load(tmp_path / "a.safetensors").training
    assert (settings["steps"], settings["batch_size"], settings["lr_embedding"]) == (2, 2, 1e-4)
    assert settings["lr_values"] == 3e-2  # not in the recipe: the dataclass default
    code, _, err = run([*base, "--out", tmp_path / "b.safetensors", "--steps", "1", "--lr-embedding", "6e-3"], capsys)
    assert code == 0, err
    settings = Concept.load(tmp_path / "b.safetensors").training
    assert (settings["steps"], settings["lr_embedding"], settings["batch_size"]) == (1, 6e-3, 2)


def test_generation_defaults_come_from_the_models_recipe(model_with_recipe, tiny_pipeline_dir):
    from perfusion.recipes import read_recipe

    assert read_recipe(model_with_recipe).generation["guidance_scale"] == 2.5
    assert read_recipe(tiny_pipeline_dir).generation == {} and read_recipe(tiny_pipeline_dir).training == {}


def test_the_embedded_model_carries_its_recipe():
    from perfusion.recipes import read_recipe
    from perfusion.world import default_model_path

    recipe = read_recipe(default_model_path())
    assert recipe.training["lr_embedding"] == 3e-4 and recipe.training["steps"] == 300
    assert recipe.generation["guidance_scale"] == 2.5


def test_a_broken_recipe_file_is_one_clear_line(model_with_recipe, tmp_path, captions_file, capsys):
    (model_with_recipe / "perfusion_recipe.json").write_text('{"training": {"stepz": 3}}')
    images = write_concept_images(tmp_path / "disc")
    expect_refusal(
        [
            "train",
            "--model",
            model_with_recipe,
            "--images",
            images,
            "--token",
            "<mydisc>",
            "--supercategory",
            "cat",
            "--out",
            tmp_path / "c.safetensors",
            "--quiet",
        ],
        capsys,
        "stepz",
    )


def test_generate_takes_the_image_size_and_refuses_one_not_a_multiple_of_8(
    tiny_pipeline_dir, tmp_path, concept_file, captions_file, capsys
):
    common = [
        "generate",
        "--model",
        tiny_pipeline_dir,
        "--concept",
        concept_file,
        "--prompt",
        "a photo of a <mycat>",
        "--steps",
        "2",
        "--captions",
        captions_file,
    ]
    code, stdout, err = run([*common, "--height", "24", "--width", "16", "--out", tmp_path / "gen"], capsys)
    assert code == 0, err
    assert Image.open(stdout.split()[0]).size == (16, 24)  # PIL: (width, height)
    expect_refusal(
        [*common, "--height", "20", "--out", tmp_path / "bad"], capsys, "height must be a positive multiple of 8"
    )
    assert not (tmp_path / "bad").exists()


def test_every_config_field_is_a_flag_of_its_command():
    """Flags are made from the dataclasses, so a new setting cannot be left off the command line."""
    from dataclasses import fields

    from perfusion.cli import parser
    from perfusion.pipeline.generation import GenerationConfig
    from perfusion.training.trainer import TrainingConfig

    commands = next(action for action in parser()._actions if action.dest == "command").choices
    for command, config, api_only in (("train", TrainingConfig, set()), ("generate", GenerationConfig, {"regions"})):
        destinations = {action.dest for action in commands[command]._actions}
        assert {item.name for item in fields(config)} - api_only <= destinations, command


@pytest.mark.parametrize("generation", [{"guidance_scale": "2.5"}, {"global_lock": "false"}])
def test_a_recipe_value_of_the_wrong_type_is_one_clear_line(
    model_with_recipe, concept_file, tmp_path, capsys, generation
):
    import json

    (model_with_recipe / "perfusion_recipe.json").write_text(json.dumps({"generation": generation}))
    expect_refusal(
        [
            "generate",
            "--model",
            model_with_recipe,
            "--concept",
            concept_file,
            "--prompt",
            "a <mycat>",
            "--out",
            tmp_path / "out",
        ],
        capsys,
        "must be",
    )


def test_a_plain_prompt_file_for_the_world_judge_is_one_clear_line(tiny_pipeline_dir, tmp_path, concept_file, capsys):
    """The world judge scores only prompts that state attributes: a .txt file is refused before any image is made."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {}\n")
    code = main(
        [
            "eval",
            "--model",
            str(tiny_pipeline_dir),
            "--concept",
            str(concept_file),
            "--prompts",
            str(prompts),
            "--images",
            str(write_concept_images(tmp_path / "disc")),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("perfusion: error:") == 1 and "--clip" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_eval_takes_the_image_size_and_refuses_a_bad_one_before_the_model(
    tiny_pipeline_dir, tmp_path, concept_file, capsys
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"background": "red"}\n')
    common = [
        "eval",
        "--model",
        tiny_pipeline_dir,
        "--concept",
        concept_file,
        "--prompts",
        prompts,
        "--images",
        write_concept_images(tmp_path / "disc"),
        "--images-per-prompt",
        "1",
        "--steps",
        "2",
    ]
    code, _, err = run([*common, "--height", "24", "--width", "16", "--out", tmp_path / "eval"], capsys)
    assert code == 0, err
    assert {Image.open(path).size for path in (tmp_path / "eval").rglob("*-0.png")} == {(16, 24)}
    expect_refusal(
        [*common, "--width", "12", "--out", tmp_path / "bad"], capsys, "width must be a positive multiple of 8"
    )
    assert not (tmp_path / "bad").exists()


def test_a_hub_id_offline_is_one_line_that_says_so(tmp_path, captions_file, capsys, monkeypatch):
    """A user's model is often a hub id (issue 34); offline it cannot download, and says so in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = write_concept_images(tmp_path / "disc")
    argv = train_args("stable-diffusion-v1-5/stable-diffusion-v1-5", images, tmp_path / "c.safetensors", captions_file)
    expect_refusal(argv, capsys, "HF_HUB_OFFLINE is set")


def test_a_folder_without_a_pipeline_is_one_line(tmp_path, captions_file, capsys):
    images = write_concept_images(tmp_path / "disc")
    (tmp_path / "empty").mkdir()
    expect_refusal(
        train_args(tmp_path / "empty", images, tmp_path / "c.safetensors", captions_file), capsys, "no model_index.json"
    )


@pytest.mark.parametrize("with_mask", [False, True])
def test_generate_from_an_init_image_img2img_and_inpainting(
    tiny_pipeline_dir, concept_file, tmp_path, capsys, with_mask
):
    """Users of these tools work in img2img and inpainting as much as in text-to-image (issue 34)."""
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "start.png")
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(tmp_path / "mask.png")
    argv = [
        "generate",
        "--model",
        tiny_pipeline_dir,
        "--concept",
        concept_file,
        "--prompt",
        "a photo of a <mycat>",
        "--steps",
        "3",
        "--init-image",
        tmp_path / "start.png",
        "--strength",
        "0.7",
        "--out",
        tmp_path / "out",
    ]
    if with_mask:
        argv += ["--mask-image", tmp_path / "mask.png"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    written = [line for line in stdout.splitlines() if line.endswith(".png")]
    assert len(written) == 1 and Image.open(written[0]).size == (16, 16)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask-image", "mask.png"], "--mask-image needs --init-image"),
        (["--init-image", "start.png", "--strength", "0"], "--strength must lie in (0, 1]"),
        (["--init-image", "missing.png"], "missing.png"),
        (["--init-image", "start.png", "--height", "64"], "do not apply with --init-image"),
    ],
)
def test_generate_refuses_bad_image_to_image_arguments_in_one_line(
    tiny_pipeline_dir, concept_file, tmp_path, capsys, extra, message
):
    Image.new("RGB", (16, 16)).save(tmp_path / "start.png")
    extra = [str(tmp_path / part) if part.endswith(".png") else part for part in extra]
    argv = [
        "generate",
        "--model",
        tiny_pipeline_dir,
        "--concept",
        concept_file,
        "--prompt",
        "a <mycat>",
        "--out",
        tmp_path / "o",
    ]
    expect_refusal([*argv, *extra], capsys, message)
