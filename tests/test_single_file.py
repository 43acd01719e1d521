"""Single-file checkpoints (issue 34): a user's base model is often one .safetensors in the original key layout. It
opens through diffusers' from_single_file with --config for the components' configs, has the folder's fingerprint,
and draws what the folder draws with the same concept."""

import numpy as np
import pytest
import torch
from ldm_layout import ldm_state_dict
from safetensors.torch import save_file

from perfusion.cli import main
from perfusion.pipeline.fingerprint import pipeline_fingerprint
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import load_concepts
from perfusion.pipeline.models import ModelError, open_pipeline
from perfusion.testing import handmade_concept, load_pipeline

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def single_file(folder, path, suffix=".safetensors"):
    """The folder's pipeline written as one original-layout checkpoint."""
    state = ldm_state_dict(load_pipeline(folder))
    file = path / f"model{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": state}, file)
    else:
        save_file(state, str(file))
    return file


def weights(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": tensor
        for part in PARTS
        if getattr(pipe, part, None) is not None
        for name, tensor in getattr(pipe, part).state_dict().items()
        if not name.endswith("position_ids")
    }


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sdxl"])
def test_a_single_file_opens_with_every_weight_of_the_folder(kind, tiny_pipeline_dir, sd2_dir, sdxl_dir, tmp_path):
    """Written in the original layout and read back by diffusers' own converters, every tensor of the UNet, the VAE
    and the text encoders is the folder's, exactly; and so is the base-model fingerprint."""
    folder = {"sd15": tiny_pipeline_dir, "sd2": sd2_dir, "sdxl": sdxl_dir}[kind]
    path = single_file(folder, tmp_path)
    from_folder = open_pipeline(folder, device="cpu")
    from_file = open_pipeline(path, device="cpu", config=str(folder))
    assert type(from_file) is type(from_folder)
    expected, got = weights(from_folder), weights(from_file)
    assert set(got) == set(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected), [
        name for name in expected if not torch.equal(got[name], expected[name])
    ][:3]
    assert pipeline_fingerprint(from_file) == pipeline_fingerprint(from_folder)


def test_a_concept_trained_on_the_folder_draws_the_same_on_the_single_file(tiny_pipeline_dir, tmp_path):
    """A concept made on the folder loads on the single file (the fingerprint check passes) and gives the same
    image, pixel for pixel (tolerance 0: the same weights, the same seed, the same CPU kernels)."""
    from_folder = open_pipeline(tiny_pipeline_dir, device="cpu")
    concept = handmade_concept(from_folder)
    from_file = open_pipeline(single_file(tiny_pipeline_dir, tmp_path), device="cpu", config=str(tiny_pipeline_dir))
    config = GenerationConfig(num_inference_steps=2, height=16, width=16, seed=3)
    images = []
    for pipe in (from_folder, from_file):
        pipe.set_progress_bar_config(disable=True)
        load_concepts(pipe, [concept])
        images.append(torch.from_numpy(np.asarray(generate(pipe, "a <mycat> on a sofa", config)[0])))
    assert torch.equal(images[0], images[1])


def test_the_weights_come_from_the_file_not_the_config_folder(tiny_pipeline_dir, tmp_path):
    """--config gives configs only: a file with one cross-attention key changed opens with that change, and so with
    another fingerprint (a concept trained on the folder would be refused on it)."""
    state = ldm_state_dict(load_pipeline(tiny_pipeline_dir))
    (key,) = [key for key in state if key.endswith("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")]
    state[key] = state[key] * 2
    save_file(state, str(tmp_path / "changed.safetensors"))
    pipe = open_pipeline(tmp_path / "changed.safetensors", device="cpu", config=str(tiny_pipeline_dir))
    folder = open_pipeline(tiny_pipeline_dir, device="cpu")
    weight = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(pipe.unet.state_dict()[weight], folder.unet.state_dict()[weight] * 2)
    assert pipeline_fingerprint(pipe) != pipeline_fingerprint(folder)


def test_a_ckpt_file_opens_too(tiny_pipeline_dir, tmp_path):
    """Older checkpoints are pickled .ckpt files with a "state_dict" (read with weights_only)."""
    pipe = open_pipeline(single_file(tiny_pipeline_dir, tmp_path, ".ckpt"), device="cpu", config=str(tiny_pipeline_dir))
    assert pipeline_fingerprint(pipe) == pipeline_fingerprint(open_pipeline(tiny_pipeline_dir, device="cpu"))


def test_offline_a_single_file_without_config_is_one_line(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Without --config diffusers would download the configs; offline that cannot work, and the line says what to
    give instead."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="needs --config"):
        open_pipeline(single_file(tiny_pipeline_dir, tmp_path), device="cpu")


@pytest.mark.parametrize(
    "case, message",
    [
        ("damaged", "cannot load the checkpoint"),
        ("missing", "no such checkpoint file"),
        ("config-not-a-model", "not a diffusers pipeline folder"),
        ("config-on-a-folder", "--config is for single-file checkpoints"),
    ],
)
def test_bad_single_file_input_is_one_line_on_the_command_line(case, message, tiny_pipeline_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    model, config = {
        "damaged": (damaged, tiny_pipeline_dir),
        "missing": (tmp_path / "absent.safetensors", tiny_pipeline_dir),
        "config-not-a-model": (damaged, tmp_path),
        "config-on-a-folder": (tiny_pipeline_dir, tiny_pipeline_dir),
    }[case]
    argv = ["generate", "--model", str(model), "--config", str(config), "--prompt", "a cat", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("perfusion: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_generate_on_a_single_file_from_the_command_line(tiny_pipeline_dir, tmp_path, capsys):
    path = single_file(tiny_pipeline_dir, tmp_path)
    out = tmp_path / "out"
    argv = ["generate", "--model", str(path), "--config", str(tiny_pipeline_dir), "--prompt", "a cat"]
    assert main([*argv, "--out", str(out), "--steps", "2", "--height", "16", "--width", "16"]) == 0
    assert len(list(out.glob("*.png"))) == 1
