"""SDXL is not supported yet (issue 24): every entry point says so in one line, before anything is changed."""

import pytest
from diffusers import DiffusionPipeline
from perfusion.testing import build_tiny_sdxl_pipeline, handmade_concept, load_pipeline, write_concept_images

from perfusion.cli import main
from perfusion.images import load_training_images
from perfusion.loader import find_runtime, load_concepts
from perfusion.models import UnsupportedPipelineError
from perfusion.train import train_concept


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture
def sdxl_pipe(sdxl_dir):
    pipe = DiffusionPipeline.from_pretrained(sdxl_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loading_a_concept_into_sdxl_is_refused_and_changes_nothing(sdxl_pipe, tiny_pipeline_dir):
    concept = handmade_concept(load_pipeline(tiny_pipeline_dir))
    vocabulary = len(sdxl_pipe.tokenizer)
    with pytest.raises(UnsupportedPipelineError, match="two text encoders"):
        load_concepts(sdxl_pipe, concept)
    assert find_runtime(sdxl_pipe) is None and len(sdxl_pipe.tokenizer) == vocabulary


def test_training_on_sdxl_is_refused(sdxl_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    with pytest.raises(UnsupportedPipelineError, match="SDXL"):
        train_concept(sdxl_pipe, images, "<mydisc>", "cat", progress=False)


def test_the_command_line_refuses_sdxl_in_one_line(sdxl_dir, tmp_path, capsys):
    code = main(["train", "--model", str(sdxl_dir), "--images", str(write_concept_images(tmp_path / "disc")),
                 "--token", "<mydisc>", "--supercategory", "cat", "--out", str(tmp_path / "x.safetensors"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("perfusion: error:") == 1 and "two text encoders" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()
