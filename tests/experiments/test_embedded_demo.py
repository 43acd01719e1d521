"""The main job end to end on the embedded base model, with a short budget: the judge's readings are reported (and
the concept's recognition, which the recipe does not yet reach, is an expected failure), and the sweep, the contact
sheets and the report are written with working links."""

import json
import re

import pytest

from perfusion.experiments.demo import DemoConfig, run_demo
from perfusion.experiments.sweep import SweepConfig
from perfusion.world import lab_recipe
from perfusion.world.model_path import MODEL_DIR


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    if not (MODEL_DIR / "model_index.json").exists():
        pytest.skip("the embedded base model has not been exported yet")
    from perfusion.pipeline.models import open_pipeline

    pipe = open_pipeline(str(MODEL_DIR))
    config = DemoConfig(
        training=lab_recipe.training_config(steps=80, seed=0),
        sweep=SweepConfig(betas=(0.5, 0.9), images_per_prompt=4, steps=12, guidance=lab_recipe.GUIDANCE),
        prompts=3,
        composition_backgrounds=("blue",),
    )
    out = tmp_path_factory.mktemp("demo")
    run_demo(pipe, out, config, log=lambda message: None)
    return out


def test_the_demo_reports_what_the_judge_recognised_and_accepted(demo_out):
    summary = json.loads((demo_out / "summary.json").read_text())
    for scores in (summary["new_contexts"], summary["supercategory_only"]):
        assert 0.0 <= scores["recognised"] <= scores["accepted"] <= 1.0, scores
        assert len(scores["per_prompt"]["accepted"]) == 3  # one share per prompt


@pytest.mark.xfail(
    strict=True,
    reason="issue 22: the embedded recipe draws the concept as noise squares, which the "
    "judge refuses; this passes (and strict xfail then fails the suite) once a recipe draws it",
)
def test_the_concept_is_recognised_in_new_contexts(demo_out):
    # Same prompts and seeds as the base model's "cat" row; the judge must name the black cat in half the images.
    assert json.loads((demo_out / "summary.json").read_text())["new_contexts"]["recognised"] >= 0.5


def test_sweep_files_and_plot(demo_out):
    rows = json.loads((demo_out / "sweep" / "metrics.json").read_text())["rows"]
    assert [row["beta"] for row in rows] == [0.5, 0.9]
    assert all(row["images"] == 12 for row in rows)
    assert (demo_out / "sweep" / "metrics.csv").read_text().startswith("beta,")
    assert (demo_out / "sweep" / "pareto.png").stat().st_size > 1000
    assert (demo_out / "sweep" / "sheet.png").stat().st_size > 1000 and (demo_out / "contexts.png").is_file()
    assert len(list((demo_out / "sweep" / "beta-0.500").glob("*.png"))) == 12


def test_report_exists_and_its_links_resolve(demo_out):
    html = (demo_out / "report.html").read_text()
    links = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html)
    assert any(link.endswith("pareto.png") for link in links)
    assert any(link.startswith("training/") for link in links)
    for link in links:
        assert (demo_out / link).is_file(), link


def test_the_composition_benchmark_judges_every_block(demo_out, tmp_path, benchmark_script):
    benchmark = benchmark_script("composition")
    concepts = [str(demo_out / "concepts" / f"{name}.safetensors") for name in ("mycat", "mymug")]
    out = tmp_path / "composition.json"
    report = benchmark.main(["--concepts", *concepts, "--seeds", "1", "--steps", "4", "--out", str(out)])
    blocks = report["blocks"]
    counts = {name: [(result["hits"], result["images"]) for result in results] for name, results in blocks.items()}
    names = ("alone", "beside an object", "pairs", "control: seen objects", "control: category words")
    assert [len(counts[name]) for name in names] == [2, 2, 1, 1, 3]
    assert all(images == 4 and 0 <= hits <= images for results in counts.values() for hits, images in results)
    written = json.loads(out.read_text())["blocks"]["pairs"][0]["prompt"]
    assert written.startswith("a photo of a <mycat> next to a <mymug>")
    assert blocks["control: category words"][-1]["prompt"].startswith("a photo of a cat next to a cup")
    assert report["composition"] == json.loads(out.read_text())["composition"] == "regions"  # the recipe's
    assert (tmp_path / "composition.png").stat().st_size > 1000  # the contact sheet, beside --out
    with pytest.raises(SystemExit, match="exists"):  # never overwrites
        benchmark.main(["--concepts", *concepts, "--out", str(out)])
    with pytest.raises(SystemExit, match="not a micro-world object"):
        benchmark.main(["--concepts", *concepts, "--object", "unicorn"])
