"""The shipped judge: accuracy on fresh renders, and judge-based metrics that behave sensibly."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from perfusion.world.catalog import HELD_OUT, members
from perfusion.world.examples import example_concept
from perfusion.world.judge import Judge
from perfusion.world.judge_data import draw_negatives, labelled_batch, specs_from_seeds
from perfusion.world.judge_model import HEAD_CLASSES, NOTHING
from perfusion.world.metrics import identity_fidelity, recognised_share, text_alignment
from perfusion.world.negatives import KINDS
from perfusion.world.prompts import PromptSpec
from perfusion.world.scenes import SceneSpec, render, sample_spec
from perfusion.world.train_judge import count_refused

SAMPLE_SEEDS = range(2_100_000_000, 2_100_000_200)  # 200 scenes from seeds neither training nor evaluation used
REQUIRED_ACCURACY = 0.97  # the judge measures >= 99% on 4000 scenes; 97% leaves room for a 200-scene sample
REQUIRED_REFUSAL = 0.90  # each negative kind is refused >= 95% on 1000 scenes; 90% leaves room for a 100-scene sample


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


def test_accuracy_on_fresh_renders(judge):
    images, targets = labelled_batch(specs_from_seeds(SAMPLE_SEEDS))
    output = judge.run(images)
    for name in HEAD_CLASSES:
        valid = targets[name] >= 0
        accuracy = (output.probabilities[name].argmax(-1) == targets[name])[valid].float().mean().item()
        assert accuracy >= REQUIRED_ACCURACY, f"{name}: {accuracy:.3f}"


def test_verdicts_name_the_scene(judge):
    spec = SceneSpec("black cat", "teal", "top", "large")
    pair = SceneSpec("teacup", "pink", "right", "large", second_object="penguin")
    single, double = judge.predict([render(spec), render(pair)])
    assert (single.count, single.object, single.background, single.position, single.size) == (
        1,
        "black cat",
        "teal",
        "top",
        "large",
    )
    assert (double.count, double.left_object, double.right_object) == (2, "penguin", "teacup")
    assert set(double.present) == {"penguin", "teacup"} and abs(float((single.embedding**2).sum()) - 1) < 1e-4


def test_accepts_tensors_and_larger_images(judge):
    image = render(SceneSpec("rose", "yellow", "bottom", "small"))
    from_tensor = judge.predict(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255)
    from_large = judge.predict([image.resize((128, 128), Image.BICUBIC)])
    assert from_tensor[0].object == from_large[0].object == "rose"
    with pytest.raises(ValueError, match="non-empty"):
        judge.predict([])


def test_a_faithful_render_aligns_and_a_wrong_background_does_not(judge):
    rng = random.Random(3)
    prompt = PromptSpec(background="red", position="left", size="large", supercategory="cat")
    faithful = [
        render(
            replace(
                sample_spec(rng),
                object="black cat",
                background="red",
                position="left",
                size="large",
                second_object=None,
            )
        )
        for _ in range(8)
    ]
    wrong = [
        render(
            replace(
                sample_spec(rng),
                object="black cat",
                background="green",
                position="left",
                size="large",
                second_object=None,
            )
        )
        for _ in range(8)
    ]
    assert text_alignment(judge, faithful, prompt) > 0.95
    assert text_alignment(judge, wrong, prompt) < 0.75


def test_fidelity_prefers_the_concept_over_its_category_mates(judge):
    concept = example_concept("<mycat>")
    references = [Image.open(path).convert("RGB") for path in concept.image_paths()]
    rng = random.Random(5)
    fresh = [
        render(replace(sample_spec(rng), object=concept.object, second_object=None, position="centre"))
        for _ in range(6)
    ]
    other = next(name for name in members("cat") if name not in HELD_OUT)
    impostors = [
        render(replace(sample_spec(rng), object=other, second_object=None, position="centre")) for _ in range(6)
    ]
    assert identity_fidelity(judge, fresh, references) > identity_fidelity(judge, impostors, references) + 0.2
    assert recognised_share(judge, fresh, concept.object) == 1.0
    assert recognised_share(judge, impostors, concept.object) == 0.0


def test_fidelity_of_an_image_to_itself_is_one(judge):
    # The embedding is L2-normalised: an image against itself is a cosine of 1 up to float rounding.
    images = [render(sample_spec(random.Random(seed))) for seed in range(4)]
    for image in images:
        assert identity_fidelity(judge, [image], [image]) == pytest.approx(1.0, abs=1e-4)


def test_load_refuses_a_file_that_is_not_a_judge(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a judge"):
        Judge.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="train_judge"):
        Judge.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_an_objects_colours_without_its_shape_are_refused(judge, kind):
    specs = specs_from_seeds(range(2_100_001_000, 2_100_001_100))
    images, targets = labelled_batch(specs, draw_negatives(specs, 1.0, seed=9, kinds=(kind,)), seed=9)
    refused, total = count_refused(judge.run(images).probabilities, targets)
    assert refused / total >= REQUIRED_REFUSAL, f"{kind}: {refused}/{total}"


def test_a_refused_image_names_nothing_and_scores_no_recognition(judge):
    from perfusion.world.render import render_layers

    spec = SceneSpec("black cat", "red", "centre", "large")
    square = render_layers(spec, negatives=("noise_square",), rng=random.Random(1))[0]
    verdict = judge.predict([square])[0]
    assert verdict.object == NOTHING and verdict.present == ()
    assert recognised_share(judge, [square], "black cat") == 0.0
    assert recognised_share(judge, [render(spec)], "black cat") == 1.0


def test_failed_generations_held_out_from_training_are_refused(judge):
    from perfusion.world.hard_negatives import HardNegatives

    # Measured 42 of the 48 held-out images (87.5%); the bar of 95% is not met yet (docs/judge.md). 0.85 catches a
    # judge that refuses fewer of them than the shipped one does.
    assert HardNegatives.load().refused(judge.net, split="validation") >= 0.85


def test_fidelity_is_computed_over_the_accepted_images_only(judge):
    from perfusion.world.metrics import accepted_fidelity
    from perfusion.world.render import render_layers

    spec = SceneSpec("black cat", "teal", "centre", "large")
    real = render(spec)
    square = render_layers(spec, negatives=("noise_square",), rng=random.Random(2))[0]
    references = judge.run([real]).embeddings
    fidelity, share = accepted_fidelity(judge.run([real, square]), references)
    assert share == 0.5 and fidelity == pytest.approx(1.0, abs=1e-4)  # the square is not averaged in
    fidelity, share = accepted_fidelity(judge.run([square]), references)
    assert share == 0.0 and fidelity != fidelity  # nan: nothing accepted, nothing to compare
