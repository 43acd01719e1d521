"""The families-laboratory demo's own logic: its settings, the prompt spread, and the composition verdict."""

import pytest
from PIL import Image

from perfusion.experiments.lab_demo import LabDemoConfig, quick
from perfusion.experiments.prompt_sets import spread
from perfusion.world.families.examples import example_instances
from perfusion.world.families.scoring import bleeding, bleeding_share, both_recognised


def test_spread_keeps_the_ends_and_covers_the_middle():
    assert spread(list(range(12)), 4) == [0, 4, 7, 11]
    assert spread(list(range(12)), 1) == [0]
    assert spread([1, 2], 5) == [1, 2]


def test_config_refuses_one_concept_and_a_beta_out_of_range():
    with pytest.raises(ValueError, match="two concepts"):
        LabDemoConfig(concepts=("mycat",))
    with pytest.raises(ValueError, match="beta"):
        LabDemoConfig(betas=(0.5, 1.5))
    with pytest.raises(ValueError, match="prompts"):
        LabDemoConfig(prompts=13)


def test_quick_keeps_two_concepts_and_the_sweeps_ends():
    config = quick(LabDemoConfig(concepts=("mycat", "mymug", "mydog")))
    assert config.concepts == ("mycat", "mymug") and config.betas == (0.5, 0.9)
    assert config.training["steps"] == 4 and config.prompts == 2


class Reading:
    def __init__(self, labels):
        self.labels = labels  # one dict per image

    def label(self, name, row):
        return self.labels[row][name]


class SideJudge:
    """Reads whole images from a list of labels; a crop (here the name of its side) as itself."""

    def __init__(self, labels):
        self.labels = labels

    def read(self, images):
        return images[0] if isinstance(images[0], str) else Reading(self.labels)


class SideGallery:
    """Recognises a concept only on the side given (a stand-in for the identity read of that side's crop)."""

    def __init__(self, side):
        self.side = side

    def recognised(self, side):
        return [side == self.side]


def test_both_concepts_must_be_found_each_on_its_own_side(monkeypatch):
    instances = example_instances()
    cat, mug = instances["mycat"], instances["mymug"]
    pair = [("<mycat>", cat), ("<mymug>", mug)]
    image = Image.new("RGB", (64, 64))
    crops = []
    monkeypatch.setattr("perfusion.world.families.scoring.focus", lambda image, side: crops.append(side) or side)
    judge_labels = [
        {"count": 2, "left": "cat", "right": "mug"},  # both there: recognised if each side is its concept's
        {"count": 2, "left": "mug", "right": "cat"},  # both there, but the cat on the right is not recognised
        {"count": 1, "left": "cat", "right": "cat"},  # one object
        {"count": 2, "left": "cat", "right": "dog"},  # no mug
    ]

    galleries = {"cat": SideGallery("left"), "mug": SideGallery("right")}
    verdicts = both_recognised(
        SideJudge(judge_labels), lambda instance, changes: galleries[instance.category], [image] * 4, pair
    )
    assert verdicts == [True, False, False, False]
    assert crops == ["left", "right", "right"]  # each concept read on the side of its category, until one fails


def test_two_concepts_of_one_category_may_stand_either_way_round(monkeypatch):
    from dataclasses import replace

    cat = example_instances()["mycat"]
    other = replace(cat, pattern="plain")  # a second cat concept
    monkeypatch.setattr("perfusion.world.families.scoring.focus", lambda image, side: side)
    judge = SideJudge([{"count": 2, "left": "cat", "right": "cat"}])
    galleries = {cat: SideGallery("right"), other: SideGallery("left")}  # the first concept stands on the right
    pair = [("<a>", cat), ("<b>", other)]
    assert both_recognised(
        judge, lambda instance, changes: galleries[instance], [Image.new("RGB", (64, 64))], pair
    ) == [True]


class CropJudge:
    """Reads whole images from one list of labels and each side's crop (here the side's name) from another."""

    def __init__(self, whole, crops):
        self.whole, self.crops = whole, crops

    def read(self, images):
        if isinstance(images[0], str):
            return Reading([self.crops[images[0]]])
        return Reading(self.whole)


def test_bleeding_is_one_concepts_colour_or_pattern_on_the_other(monkeypatch):
    """The black striped cat beside the red plain mug: the mug read as black, or as striped, took from the cat; the
    mug read as plain red and the cat as black stripes is clean; an image without the two categories is unread."""
    instances = example_instances()
    pair = [("<mycat>", instances["mycat"]), ("<mymug>", instances["mymug"])]
    monkeypatch.setattr("perfusion.world.families.scoring.focus", lambda image, side: side)
    both = {"count": 2, "left": "cat", "right": "mug"}
    cat = {"colour": "black", "pattern": "stripes"}
    image = [Image.new("RGB", (64, 64))]
    cases = [
        ({"left": cat, "right": {"colour": "red", "pattern": "plain"}}, False),
        ({"left": cat, "right": {"colour": "black", "pattern": "plain"}}, True),  # the cat's colour on the mug
        ({"left": cat, "right": {"colour": "red", "pattern": "stripes"}}, True),  # the cat's stripes on the mug
        ({"left": {"colour": "black", "pattern": "plain"}, "right": {"colour": "red", "pattern": "plain"}}, False),
    ]  # the last: the cat lost its stripes, but "plain" is nothing the mug could lend it
    for crops, bled in cases:
        assert bleeding(CropJudge([both], crops), image, pair) == [bled]
    assert bleeding(CropJudge([{"count": 2, "left": "cat", "right": "dog"}], {}), image, pair) == [None]
    assert bleeding_share([True, False, None, False]) == pytest.approx(1 / 3)


def test_bleeding_stands_two_concepts_of_one_category_the_way_round_that_fits():
    from types import SimpleNamespace

    cat = example_instances()["mycat"]  # black, striped
    other = SimpleNamespace(category="cat", colour_name="white", pattern="plain")  # a second cat concept
    pair = [("<a>", cat), ("<b>", other)]
    judge = CropJudge(
        [{"count": 2, "left": "cat", "right": "cat"}],
        {"left": {"colour": "white", "pattern": "plain"}, "right": {"colour": "black", "pattern": "stripes"}},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("perfusion.world.families.scoring.focus", lambda image, side: side)
        assert bleeding(judge, [Image.new("RGB", (64, 64))], pair) == [False]  # <b> on the left, <a> on the right


def test_the_demo_writes_the_summary_a_script_reads_and_every_sheet(
    tmp_path, tiny_pipe, tiny_pipeline_dir, tiny_judge_path, monkeypatch
):
    import json

    from perfusion.experiments.lab_demo import run_lab_demo
    from perfusion.world.basemodel.data import world_captions
    from perfusion.world.families import sampling, scoring
    from perfusion.world.families.judge import Judge

    steps_used = []
    generate = sampling.generate_images

    def counted(*args, **kwargs):
        steps_used.append(kwargs.get("steps"))
        return generate(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_images", counted)  # the composition's
    monkeypatch.setattr(scoring, "generate_images", counted)  # every scored row's
    config = LabDemoConfig(
        betas=(0.5, 0.9),
        prompts=1,
        seeds=(0,),
        composition_seeds=(0,),
        training={"steps": 2, "batch_size": 2},
        inference_steps=2,
    )
    out, judge = tmp_path / "demo", Judge.load(tiny_judge_path)
    captions = world_captions(count=200)
    summary = run_lab_demo(tiny_pipe, judge, tiny_pipeline_dir, out, config, captions=captions, log=lambda line: None)
    written = json.loads((out / "summary.json").read_text())
    assert written["concepts"].keys() == {"<mycat>", "<mymug>"} == summary["concepts"].keys()
    cat = written["concepts"]["<mycat>"]
    assert [entry["beta"] for entry in cat["sweep"]] == [0.5, cat["default_beta"], 0.9]  # the default among them
    shares = [cat["recognised"], cat["alignment"], cat["prior"]["recognised"], cat["verbal_oracle"]["alignment"]]
    assert all(0.0 <= share <= 1.0 for share in shares) and 0.0 <= written["composition"]["both_recognised"] <= 1.0
    bled = written["composition"]["bleeding"]  # nan where the judge saw the two categories in no image
    assert bled != bled or 0.0 <= bled <= 1.0
    for name in ("mycat.png", "mymug.png", "mycat-pareto.png", "composition.png", "report.html"):
        assert (out / name).is_file()
    assert "mycat.png" in (out / "report.html").read_text()
    assert steps_used and set(steps_used) == {2}  # every row, the prior included, at the demo's sampling steps


def test_the_demo_command_takes_a_families_model_to_the_laboratory_demo(tmp_path, tiny_pipeline_dir, capsys):
    import json
    import shutil

    from perfusion.cli import main
    from perfusion.world.basemodel.export import model_world

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    assert model_world(model) == "emoji"  # a folder that does not say: the micro world, as before
    (model / "basemodel.json").write_text(json.dumps({"world": "families"}))
    assert model_world(model) == "families"
    missing = tmp_path / "no-judge.safetensors"
    code = main(["demo", "--model", str(model), "--out", str(tmp_path / "out"), "--judge", str(missing)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "no judge weights" in error[0]  # the laboratory's judge was asked for
