"""benchmarks/compare.py on the families laboratory: its concepts, prompts, scorer and composition verdict."""

import torch
from PIL import Image

from perfusion.world.families.examples import EXAMPLES_DIR


def tiny_judge(path):
    from perfusion.world.families.judge import save_judge
    from perfusion.world.families.judge_net import JudgeNet, JudgeNetConfig

    torch.manual_seed(0)
    net = JudgeNet(JudgeNetConfig(widths=(8, 8, 16, 16), spatial_features=16, identity_features=16, embedding_dim=8))
    save_judge(net.eval(), path, {"steps": 0})
    return str(path)


def test_families_concepts_get_their_prompts_and_the_laboratorys_judge(benchmark_script, tmp_path):
    compare = benchmark_script("compare")
    concepts = {concept.name: concept for concept in compare.find_concepts(EXAMPLES_DIR)}
    cat = concepts["mycat"]
    assert cat.instance is not None and cat.supercategory == "cat"
    settings = compare.RunSettings(
        model="m", out=str(tmp_path), prompts=4, judge=tiny_judge(tmp_path / "j.safetensors")
    )
    prompts = compare.evaluation_prompts(cat, settings)
    assert len(prompts) == 4 and prompts[0].text("<mycat>") == "a <mycat> on a blue background"
    scorer = compare.make_scorer("m", cat, prompts, settings)
    assert scorer.name == "families judge"
    images = {prompt: [Image.new("RGB", (64, 64), (20, 90, 200))] * 2 for prompt in prompts}
    scores = scorer.score(images, [], "cat")
    assert len(scores.per_prompt["recognised"]) == 4 and 0.0 <= scores.recognised <= 1.0
    assert 0.0 <= scores.alignment <= 1.0 and 0.0 <= scores.fidelity <= 1.0


def test_families_pairs_are_scored_by_both_concepts_recognised(benchmark_script, tmp_path):
    compare = benchmark_script("compare")
    concepts = {concept.name: concept for concept in compare.find_concepts(EXAMPLES_DIR)}
    settings = compare.RunSettings(model="m", out=str(tmp_path), judge=tiny_judge(tmp_path / "j.safetensors"))
    score, name = compare.composition_scorer([(concepts["mycat"], concepts["mymug"])], settings)
    assert name == "families judge"
    share = score([Image.new("RGB", (64, 64), (200, 200, 200))] * 3, (concepts["mycat"], concepts["mymug"]))
    assert share == 0.0  # a blank image holds neither concept


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
