"""What holds on every pipeline family the same way: SD 1.x, SD 2.x (one text encoder) and SDXL (two, concatenated)."""

import pytest
import torch

from perfusion.cli import main
from perfusion.concept.fingerprint import cross_attention_modules
from perfusion.method import composition_basis, gate, inverse_covariance_factor, similarity
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.processor import PerfusionAttnProcessor
from perfusion.pipeline.router import CallContext
from perfusion.pipeline.settings import set_concept_options
from perfusion.testing import handmade_concept, load_pipeline, small_corpus, write_concept_images

CAPTIONS = small_corpus()


FOLDERS = {"sd1": "tiny_pipeline_dir", "sd2": "sd2_dir", "sdxl": "sdxl_dir"}  # the session fixtures that build them


@pytest.fixture(params=list(FOLDERS))
def family_dir(request):
    return request.getfixturevalue(FOLDERS[request.param])


@pytest.fixture
def family_pipe(family_dir):
    return load_pipeline(family_dir)


def edit_processors(pipe):
    processors = [p for p in pipe.unet.attn_processors.values() if isinstance(p, PerfusionAttnProcessor)]
    assert len(processors) == len(cross_attention_modules(pipe.unet))
    return processors


def test_local_key_lock_gives_the_concept_the_supercategory_keys(family_pipe):
    """At e = i* with a saturated gate, K' i* = W_K i*_super and V' i* = o*_V in every layer."""
    concept = handmade_concept(family_pipe)
    load_concepts(family_pipe, concept, captions=CAPTIONS)
    set_concept_options(family_pipe, "<mycat>", beta=0.5, tau=1e-4)
    find_runtime(family_pipe).router.context = CallContext(
        [(("<mycat>",), torch.tensor([0]), None, None)], None
    )  # the processor alone
    for processor in edit_processors(family_pipe):
        attn = family_pipe.unet.get_submodule(processor.layer)
        e = concept.concept_encoding[None, None]
        with torch.no_grad():
            key, value = processor.edit(attn, e, attn.to_k(e), attn.to_v(e))
            supercategory_key = attn.to_k(concept.supercategory_encoding[None, None])
        torch.testing.assert_close(key, supercategory_key, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value[0, 0], concept.value_targets[processor.layer], atol=1e-5, rtol=1e-5)


def test_two_concepts_compose_exactly_in_the_c_inverse_orthonormal_basis(family_pipe):
    """U C^-1 U^T = I, and at e = i*_n the projection of the span is gone: V' i*_n = sum_m gate_m(i*_n) o*_m."""
    cat = handmade_concept(family_pipe, "<mycat>", "cat", seed=1)
    mug = handmade_concept(family_pipe, "<mymug>", "mug", seed=2)
    load_concepts(family_pipe, [cat, mug], captions=CAPTIONS)
    runtime = find_runtime(family_pipe)
    encodings = torch.stack([cat.concept_encoding, mug.concept_encoding])
    basis = composition_basis(encodings.double(), inverse_covariance_factor(runtime.inverse_covariance))
    torch.testing.assert_close(basis @ runtime.inverse_covariance @ basis.T, torch.eye(2, dtype=torch.float64))
    runtime.router.context = CallContext(
        [(("<mycat>", "<mymug>"), torch.tensor([0]), None, None)], None
    )  # the processor alone
    gates = torch.stack(
        [
            gate(
                similarity(encodings.double(), concept.concept_encoding.double(), runtime.inverse_covariance),
                concept.beta,
                concept.tau,
            )
            for concept in (cat, mug)
        ],
        -1,
    )  # (position, concept)
    for processor in edit_processors(family_pipe):
        attn = family_pipe.unet.get_submodule(processor.layer)
        with torch.no_grad():
            _, value = processor.edit(attn, encodings[None], attn.to_k(encodings[None]), attn.to_v(encodings[None]))
        targets = torch.stack([cat.value_targets[processor.layer], mug.value_targets[processor.layer]], -1).double()
        torch.testing.assert_close(value[0].double(), gates @ targets.T, atol=1e-4, rtol=1e-4)  # fp32 edit, fp64 sums


def test_the_command_line_trains_inspects_and_generates(family_dir, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS))
    out = tmp_path / "disc.safetensors"
    code = main(
        [
            "train",
            "--model",
            str(family_dir),
            "--images",
            str(write_concept_images(tmp_path / "disc")),
            "--token",
            "<mydisc>",
            "--supercategory",
            "cat",
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--gradient-accumulation",
            "1",
            "--captions",
            str(captions),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown, text = capsys.readouterr().out, TextConditioning.of(load_pipeline(family_dir))
    assert f"encoding width  {text.width}" in shown and f"text encoders   {len(text.towers)}" in shown
    for lock in ([], ["--global-lock"]):
        code = main(
            [
                "generate",
                "--model",
                str(family_dir),
                "--concept",
                str(out),
                "--prompt",
                "a photo of a <mydisc>",
                "--steps",
                "2",
                "--out",
                str(tmp_path / f"gen{len(lock)}"),
                "--captions",
                str(captions),
                *lock,
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert len(list((tmp_path / f"gen{len(lock)}").glob("*.png"))) == 1


def test_two_concepts_in_their_regions_on_a_tall_image(family_pipe):
    """A size other than the pipeline's own, not square: the regions' masks, SDXL's time ids follow it."""
    concepts = [
        handmade_concept(family_pipe, "<mycat>", "cat", seed=1),
        handmade_concept(family_pipe, "<mymug>", "mug", seed=2),
    ]
    load_concepts(family_pipe, concepts, captions=CAPTIONS)
    config = GenerationConfig(num_inference_steps=2, composition="regions", height=24, width=16)
    images = generate(family_pipe, "a <mycat> next to a <mymug>", config)
    assert [image.size for image in images] == [(16, 24)]  # PIL: (width, height)
