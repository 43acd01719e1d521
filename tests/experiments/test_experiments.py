"""Prompt files, beta parsing, sweeps and reports (a tiny pipeline; the scorer is a stand-in where noted)."""

import json
import math

import pytest

from perfusion.experiments.prompt_sets import EvalPrompt, PromptFileError, read_prompts, world_prompts, write_prompts
from perfusion.experiments.report import ImageRow, Section, write_report
from perfusion.experiments.scoring import Scores
from perfusion.experiments.sweep import SweepConfig, SweepError, parse_betas, run_sweep
from perfusion.pipeline.loader import load_concepts
from perfusion.testing import handmade_concept, small_corpus


def test_parse_betas():
    assert parse_betas("0.5:0.9:5") == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_betas("0.6,0.7") == (0.6, 0.7)
    assert parse_betas("0.7:0.7:1") == (0.7,)
    for bad in ("0.5:0.9", "a,b", "0.5:0.9:0"):
        with pytest.raises(SweepError):
            parse_betas(bad)


def test_text_and_json_prompt_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# comment\n\na photo of {} on the beach\n{} in the snow\n")
    assert [p.text("<mycat>") for p in read_prompts(text)] == ["a photo of <mycat> on the beach", "<mycat> in the snow"]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text(
        '{"background": "red", "position": "left"}\n{"prompt": "a {} next to a cup", "second_object": "cup"}\n'
    )
    prompts = read_prompts(lines, "cat")
    assert prompts[0].spec.background == "red" and "{}" in prompts[0].template
    assert prompts[1].text("<mycat>") == "a <mycat> next to a cup" and prompts[1].spec.second_object == "cup"


def test_world_prompts_round_trip_through_a_file(tmp_path):
    prompts = world_prompts("cat", 6)
    assert read_prompts(write_prompts(prompts, tmp_path / "world.jsonl"), "cat") == prompts


@pytest.mark.parametrize(
    "content, message",
    [
        ("a photo without a placeholder\n", "no {} where the concept goes"),
        ("", "no prompts"),
        ('{"background": "plaid"}\n', "background"),
        ('{"colour": "red"}\n', "unknown keys colour"),
        ("{not json\n", "not JSON"),
    ],
)
def test_bad_prompt_files_are_refused_with_the_line(tmp_path, content, message):
    path = tmp_path / ("bad.jsonl" if content.startswith("{") else "bad.txt")
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path, "cat")


class CountingScorer:
    """A stand-in scorer that records what it was given (the world judge is tested in tests/world)."""

    name = "stand-in"

    def __init__(self):
        self.calls = []

    def score(self, images_by_prompt, references, supercategory):
        self.calls.append((len(images_by_prompt), sum(len(v) for v in images_by_prompt.values()), supercategory))
        count = len(images_by_prompt)
        return Scores(
            alignment=0.5,
            fidelity=0.25,
            recognised=None,
            per_prompt={"alignment": (0.5,) * count, "fidelity": (0.25,) * count},
        )


def test_sweep_writes_images_table_and_plot(tiny_pipe, tmp_path):
    concept = handmade_concept(tiny_pipe)
    load_concepts(tiny_pipe, concept, captions=small_corpus())
    prompts = [EvalPrompt("a photo of a {} on red"), EvalPrompt("a {} next to a cup")]
    scorer = CountingScorer()
    config = SweepConfig(betas=(0.5, 0.9), images_per_prompt=2, steps=2)
    sweep = run_sweep(tiny_pipe, concept, prompts, config, scorer, [], tmp_path, progress=False)
    assert [row.beta for row in sweep.rows] == [0.5, 0.9] and scorer.calls == [(2, 4, "cat")] * 2
    assert len(list((tmp_path / "beta-0.500").glob("*.png"))) == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"][1]["beta"] == 0.9
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("beta,alignment,fidelity")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the stand-in scores are flat: no trend
    assert [t["verdict"] for t in metrics["trends"]] == ["flat within noise"] * 2 and metrics["monotone_within_noise"]


def test_report_links_its_images_relatively(tmp_path):
    (tmp_path / "grid").mkdir()
    image = tmp_path / "grid" / "a.png"
    image.write_bytes(b"png")
    report = write_report(
        tmp_path / "report.html",
        "title",
        [
            Section("one", "text", rows=[ImageRow("row", [(image, "caption <b>")])], table=[{"beta": 0.5, "x": None}]),
        ],
    )
    html = report.read_text()
    assert "src='grid/a.png'" in html and "caption &lt;b&gt;" in html and "<td>0.500</td>" in html


def test_demo_quick_writes_a_report_whose_links_resolve(tiny_pipeline_dir, tmp_path, capsys):
    """The demo's whole path on a tiny random pipeline (the numbers mean nothing here; the files must be there)."""
    import re

    from perfusion.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_pipeline_dir), "--out", str(out), "--quick"]) == 0
    report = (out / "report.html").read_text()
    links = re.findall(r"src='([^']+)'", report)
    assert len(links) > 10 and all((out / link).is_file() for link in links)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["concepts"]) == {"<mycat>", "<mymug>"} and len(summary["sweep"]) == 2
    assert 0.0 <= summary["composition_success"] <= 1.0
    assert main(["demo", "--model", str(tiny_pipeline_dir), "--out", str(out), "--quick"]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_scores_keep_each_prompts_values_beside_their_means():
    scores = Scores.from_prompts([0.5, 1.0], [0.2, 0.4], recognised=[1.0, 0.0])
    assert (scores.alignment, scores.fidelity, scores.recognised) == (0.75, pytest.approx(0.3), 0.5)
    assert scores.per_prompt == {"alignment": (0.5, 1.0), "fidelity": (0.2, 0.4), "recognised": (1.0, 0.0)}
    assert (
        Scores.from_prompts([0.5], [0.2]).recognised is None
        and "recognised" not in Scores.from_prompts([0.5], [0.2]).per_prompt
    )


def test_a_prompt_with_no_accepted_image_is_left_out_of_the_fidelity_mean():
    scores = Scores.from_prompts([0.5, 1.0], [float("nan"), 0.4], recognised=[0.0, 0.5], accepted=[0.0, 0.5])
    assert scores.fidelity == pytest.approx(0.4) and scores.accepted == 0.25
    assert math.isnan(Scores.from_prompts([0.5], [float("nan")]).fidelity)
