"""benchmarks/compare.py on the families laboratory: its concepts, prompts, scorer and composition verdict."""

import json

import pytest
import torch
from PIL import Image

from perfusion.world.families.examples import EXAMPLES_DIR


def test_families_concepts_get_their_prompts_and_the_laboratorys_judge(benchmark_script, tmp_path, tiny_judge_path):
    compare = benchmark_script("compare")
    concepts = {concept.name: concept for concept in compare.find_concepts(EXAMPLES_DIR)}
    cat = concepts["mycat"]
    assert cat.instance is not None and cat.supercategory == "cat"
    settings = compare.RunSettings(model="m", out=str(tmp_path), prompts=4, judge=tiny_judge_path)
    prompts = compare.evaluation_prompts(cat, settings)
    assert len(prompts) == 4 and prompts[0].text("<mycat>") == "a <mycat> on a blue background"
    scorer = compare.make_scorer("m", cat, prompts, settings)
    assert scorer.name == "families judge"
    images = {prompt: [Image.new("RGB", (64, 64), (20, 90, 200))] * 2 for prompt in prompts}
    scores = scorer.score(images, [], "cat")
    assert len(scores.per_prompt["recognised"]) == 4 and 0.0 <= scores.recognised <= 1.0
    assert 0.0 <= scores.alignment <= 1.0 and 0.0 <= scores.fidelity <= 1.0


def test_families_pairs_are_scored_by_both_concepts_recognised(
    benchmark_script, tmp_path, tiny_judge_path, monkeypatch
):
    compare = benchmark_script("compare")
    concepts = {concept.name: concept for concept in compare.find_concepts(EXAMPLES_DIR)}
    settings = compare.RunSettings(model="m", out=str(tmp_path), judge=tiny_judge_path)
    asked = []

    def verdicts(judge, galleries, images, pair):
        asked.append([instance.category for _, instance in pair])
        return [True, False, True]

    monkeypatch.setattr("perfusion.world.families.scoring.both_recognised", verdicts)
    monkeypatch.setattr("perfusion.world.families.scoring.bleeding", lambda judge, images, pair: [True, None, False])
    score, name = compare.composition_scorer([(concepts["mycat"], concepts["mymug"])], settings)
    assert name == "families judge"
    scores = score([Image.new("RGB", (64, 64))] * 3, (concepts["mycat"], concepts["mymug"]))
    assert scores == {"success": 2 / 3, "bleeding": 1 / 2}  # bleeding of the images where both were seen
    assert asked == [["cat", "mug"]]  # each concept's own instance
    prompts = compare.pair_prompts((concepts["mycat"], concepts["mymug"]))
    assert prompts[0] == "a photo of a <mycat> next to a <mymug>" and len(prompts) == 8  # the demo's templates


def test_a_budget_in_images_gives_each_method_the_steps_that_see_it(benchmark_script, tmp_path):
    compare = benchmark_script("compare")
    by_name = {variant.name: variant for variant in compare.VARIANTS}
    settings = compare.RunSettings(model=str(tmp_path), out=str(tmp_path), images=64)  # a folder without a recipe
    perfusion = compare.training_settings(by_name["perfusion"], settings)
    dreambooth = compare.training_settings(by_name["dreambooth"], settings)
    custom = compare.training_settings(by_name["custom-diffusion"], settings)
    assert perfusion["steps"] == 4  # 4 images x 4 micro-batches a step (TrainingConfig's SD1.5 recipe)
    assert dreambooth["steps"] == 64  # one image a step
    assert custom["steps"] == 8  # 2 x 4 a step, its class images not counted
    for name, overrides in (("perfusion", perfusion), ("dreambooth", dreambooth), ("custom-diffusion", custom)):
        assert overrides["steps"] * compare.images_per_step(by_name[name], overrides) == 64
    # the class images are reported beside them: as many again for the methods with prior preservation
    assert compare.class_images_per_step(by_name["custom-diffusion"], custom) == 8
    assert compare.class_images_per_step(by_name["dreambooth"], dreambooth) == 1
    assert compare.class_images_per_step(by_name["perfusion"], perfusion) == 0
    lora = compare.training_settings(by_name["lora-r4"], settings)
    assert compare.class_images_per_step(by_name["lora-r4"], lora) == 0


def test_training_length_is_swept_from_snapshots_of_one_run(benchmark_script, tmp_path, tiny_pipe):
    from perfusion import baselines
    from perfusion.baselines import textual_inversion
    from perfusion.training.images import TrainingImage

    compare = benchmark_script("compare")
    variant = next(variant for variant in compare.VARIANTS if variant.name == "textual-inversion")
    assert compare.snapshot_steps(variant, 100, quick=False) == {0.25: 25, 0.5: 50, 0.75: 75}
    assert compare.snapshot_path(tmp_path / "c-ti.safetensors", 0.5) == tmp_path / "c-ti-at0.5.safetensors"
    assert compare.snapshot_path(tmp_path / "c-ti.safetensors", 1.0) == tmp_path / "c-ti.safetensors"

    images = [TrainingImage(f"{i}.png", Image.new("RGB", (64, 64), (60 * i, 90, 200)), None) for i in range(2)]
    config = textual_inversion.CONFIG.for_small_model(steps=3, snapshot_steps=(1, 2), lr=0.05)
    result = textual_inversion.train(tiny_pipe, images, "<c>", "cat", config, progress=False)
    assert sorted(result.snapshots) == [1, 2]
    first = baselines.at_step(result, 1)
    assert first.steps == 1 and len(first.losses) == 1
    assert not torch.equal(first.tensors["<c>"], result.tensors["<c>"])  # the row moved after step 1
    path = baselines.save(first, tmp_path / "c-at.safetensors")
    assert torch.allclose(baselines.read(path, "textual-inversion")[0]["<c>"], result.snapshots[1]["<c>"])


def test_a_snapshot_outside_the_training_is_refused():
    import pytest

    from perfusion.baselines import BaselineError, textual_inversion

    with pytest.raises(BaselineError, match="snapshot step 5"):
        textual_inversion.CONFIG(steps=3, snapshot_steps=(5,))


def test_tuning_scores_a_rate_and_length_grid_on_tuning_concepts_and_compare_reads_its_choice(
    benchmark_script, tmp_path, tiny_pipeline_dir, tiny_judge_path, monkeypatch
):
    from dataclasses import replace

    from perfusion.world.families.instances import evaluation_instance

    tune = benchmark_script("tune")
    compare = tune.compare
    concepts = tune.tuning_concepts(tmp_path / "concepts", ["cat"], 1)
    assert [concept.name for concept in concepts] == ["tune-cat-0"]
    assert concepts[0].instance == evaluation_instance("cat", 0).to_dict()  # a tuning seed, not an example's
    variant = next(variant for variant in compare.VARIANTS if variant.name == "textual-inversion")
    variant = replace(variant, training={"steps": 2, "batch_size": 1})
    settings = compare.RunSettings(
        model=str(tiny_pipeline_dir),
        out=str(tmp_path / "out"),
        prompts=1,
        images_per_prompt=1,
        inference_steps=2,
        judge=tiny_judge_path,
        isolate=False,
    )
    results = tune.tune(concepts, [variant], settings, rates=(1.0, 2.0), lengths=(1.0,))
    chosen = results["textual-inversion"]
    assert len(chosen["grid"]) == 2 and chosen["rate"] in (1.0, 2.0)
    base_lr = compare.training_config(variant, compare.training_settings(variant, settings)).lr
    assert chosen["training"] == {"lr": base_lr * chosen["rate"], "steps": 2}
    tune.write(tmp_path, results, concepts, "test")
    assert all(cell["seconds"] >= cell["train_seconds"] > 0 for cell in chosen["grid"])  # training, images, scoring
    written = json.loads((tmp_path / "tuned.json").read_text())
    assert written["seconds"] == pytest.approx(sum(cell["seconds"] for cell in chosen["grid"]))
    tuned = replace(settings, tuned=str(tmp_path / "tuned.json"))
    assert compare.training_settings(variant, tuned)["lr"] == base_lr * chosen["rate"]

    # --resume keeps every cell a stopped run finished: nothing is trained again, the same choice comes back
    monkeypatch.setattr(compare, "train", lambda *args: pytest.fail("a finished cell was trained again"))
    again = tune.tune(concepts, [variant], replace(settings, resume=True), rates=(1.0, 2.0), lengths=(1.0,))
    assert again["textual-inversion"]["grid"] == chosen["grid"]  # its cost too: what the first run spent


def test_the_choice_prefers_recognition_among_aligned_cells(benchmark_script):
    tune = benchmark_script("tune")
    cells = [
        {"recognised": 0.9, "alignment": 0.5, "training": {"steps": 10}},  # draws the concept, ignores the prompt
        {"recognised": 0.6, "alignment": 0.9, "training": {"steps": 20}},
        {"recognised": 0.6, "alignment": 0.95, "training": {"steps": 10}},
    ]
    assert tune.choose(cells) is cells[2]  # aligned, and of the equally recognised the shorter
    assert tune.choose(cells[:1]) is cells[0]  # none aligned: the best sum


def test_every_method_gets_the_same_inputs_photos_alone_unless_masks_are_asked_for(benchmark_script):
    compare = benchmark_script("compare")
    cat = next(concept for concept in compare.find_concepts(EXAMPLES_DIR) if concept.name == "mycat")
    assert compare.RunSettings(model="m", out="o").inputs == "photos"
    assert all(image.mask is None for image in compare.training_images(cat, "photos"))
    assert all(image.mask is not None for image in compare.training_images(cat, "masks"))


def test_each_swept_length_gets_its_own_snapshot_file_and_nothing_else_is_left(
    benchmark_script, tmp_path, tiny_pipeline_dir
):
    compare = benchmark_script("compare")
    cat = next(concept for concept in compare.find_concepts(EXAMPLES_DIR) if concept.name == "mycat")
    variant = next(variant for variant in compare.VARIANTS if variant.name == "textual-inversion")
    artifact = tmp_path / "mycat-textual-inversion.safetensors"
    snapshots = {0.25: 1, 0.5: 1, 0.75: 2}  # two fractions that round to one step keep a file each
    overrides = {"steps": 3, "snapshot_steps": (1, 2), "class_guidance": 2.5}
    trained = compare.train_job(
        str(tiny_pipeline_dir), cat, variant, overrides, str(artifact), None, "photos", snapshots
    )
    assert trained["steps"] == 3 and trained["images_seen"] == 3 * compare.images_per_step(variant, overrides)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [
        "mycat-textual-inversion-at0.25.safetensors",
        "mycat-textual-inversion-at0.5.safetensors",
        "mycat-textual-inversion-at0.75.safetensors",
        "mycat-textual-inversion.safetensors",
    ]
