"""The families judge's data, losses and file; the grounding of caption words; the value oracle."""

import random

import numpy as np
import pytest
import torch

from perfusion.world.families import captions, scenes, train_judge
from perfusion.world.families.instances import distance, evaluation_instance
from perfusion.world.families.judge import Judge, Reading, save_judge
from perfusion.world.families.judge_data import IGNORE, BatchRecipe, labelled_batch, neighbour
from perfusion.world.families.judge_net import HEAD_CLASSES, JudgeNet, JudgeNetConfig
from perfusion.world.families.train_judge import supervised_contrastive

SMALL = BatchRecipe(identity_instances=4, neighbours=1, pairs=2, negatives=2)


def test_a_batch_labels_each_kind_of_image():
    batch = labelled_batch(random.Random(0), SMALL)
    assert batch.images.shape == (12, 3, 64, 64) and 0 <= batch.images.min() and batch.images.max() <= 1
    accept, count = batch.targets["accept"], batch.targets["count"]
    assert accept[:8].tolist() == [1] * 8  # two views of each of 4 instances
    assert batch.identity[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert count[8:10].tolist() == [1, 1] and (batch.targets["category"][8:10] == IGNORE).all()  # the pairs
    assert accept[10:].tolist() == [0, 0] and (batch.targets["colour"][10:] == IGNORE).all()  # the negatives
    assert batch.regression_mask[:8].any(1).all() and not batch.regression_mask[8:].any()


def test_a_neighbour_is_near_but_not_the_same_instance():
    instance = evaluation_instance("cat", 0)
    rng = random.Random(1)
    gaps = [distance(instance, neighbour(instance, rng)) for _ in range(20)]
    assert all(0 < gap < 0.2 for gap in gaps)


def test_supervised_contrastive_prefers_views_of_the_same_instance():
    groups = torch.tensor([0, 0, 1, 1, -1])
    aligned = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]]), dim=-1)
    crossed = aligned[[0, 2, 1, 3, 4]]
    assert supervised_contrastive(aligned, groups, 0.1) < supervised_contrastive(crossed, groups, 0.1)


def test_the_judge_file_round_trips(tmp_path):
    torch.manual_seed(0)
    net = JudgeNet(JudgeNetConfig(widths=(8, 8, 16, 16), spatial_features=16, identity_features=16, embedding_dim=8))
    save_judge(net.eval(), tmp_path / "judge.safetensors", {"steps": 0})
    judge = Judge.load(tmp_path / "judge.safetensors")
    images = labelled_batch(random.Random(2), SMALL).images
    with torch.no_grad():
        expected = net(images)[2]
    assert torch.allclose(judge.read(images).embeddings, expected, atol=2e-2)  # fp16 weights
    assert set(judge.read(images).probabilities) == set(HEAD_CLASSES)


def test_a_judge_file_of_another_world_is_refused(tmp_path):
    from perfusion.files import atomic_save_safetensors

    atomic_save_safetensors({"x": torch.zeros(1)}, tmp_path / "other.safetensors", {"config": "{}", "classes": "{}"})
    with pytest.raises(ValueError, match="another world"):
        Judge.load(tmp_path / "other.safetensors")


def test_grounding_gives_each_objects_attribute_words_to_it_and_the_background_to_none():
    spec = scenes.sample_spec(random.Random(1))
    words = "a black long - tailed cat with white stripes next to a tall mug on a red background".split()
    first, second = spec.instances
    words = [first.category if w == "cat" else second.category if w == "mug" else w for w in words]
    owners = captions.word_objects(spec, words)
    assert owners[1:9] == [0, 0, None, 0, 0, None, 0, 0]  # "-" and "with" are linking words
    assert owners[12:14] == [1, 1]
    assert owners[-3:] == [None, None, None]  # "red" names the background


def test_grounding_finds_each_object_whichever_the_caption_names_first():
    # "Y on the left and X on the right" names the scene's second object first when the first stands at the right
    spec = scenes.sample_spec(random.Random(1))
    first, second = spec.instances
    words = f"a big {second.category} on the left and a striped {first.category} on the right".split()
    owners = captions.word_objects(spec, words)
    assert owners[1:3] == [1, 1] and owners[8:10] == [0, 0]


def test_the_value_oracle_is_W_V_of_the_attribute_words_mean_encoding(tiny_pipe):
    from perfusion import load_concepts
    from perfusion.concept.fingerprint import cross_attention_modules
    from perfusion.world.families.controls import attribute_encoding, value_oracle

    instance = evaluation_instance("cat", 1)
    concept = value_oracle(tiny_pipe, instance)
    mixture = attribute_encoding(tiny_pipe, instance)
    for name, module in cross_attention_modules(tiny_pipe.unet).items():
        assert torch.allclose(concept.value_targets[name], module.to_v(mixture), atol=1e-6)
    load_concepts(tiny_pipe, [concept], inverse_covariance=torch.eye(concept.concept_encoding.numel()))
    image = tiny_pipe("a <oracle> on a red background", num_inference_steps=2, output_type="np").images
    assert torch.isfinite(torch.from_numpy(image)).all()


def test_the_value_oracles_gate_opens_on_average_over_the_training_templates(tiny_pipe):
    # i* is the category's mean encoding over the contexts a trained concept's i* is tracked in, so that the
    # similarity s(e) = i*^T C^-1 e / i*^T C^-1 i* averages exactly 1 there (C = I here); one sentence's encoding
    # left the gate half shut in other contexts
    from perfusion import load_concepts
    from perfusion.pipeline.conditioning import TextConditioning
    from perfusion.training.trainer import DEFAULT_TEMPLATES
    from perfusion.world.families.controls import ORACLE_TOKEN, value_oracle

    concept = value_oracle(tiny_pipe, evaluation_instance("cat", 1))
    load_concepts(tiny_pipe, [concept], inverse_covariance=torch.eye(concept.concept_encoding.numel()))
    text = TextConditioning.of(tiny_pipe)
    ids = text.tokenize([template.format(ORACLE_TOKEN) for template in DEFAULT_TEMPLATES])
    encodings = text.encode(ids)[ids[0] == tiny_pipe.tokenizer.convert_tokens_to_ids(ORACLE_TOKEN)]
    target = concept.concept_encoding
    similarity = encodings.float() @ target / target.dot(target)
    assert len(similarity) == len(DEFAULT_TEMPLATES)
    assert similarity.mean().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(concept.supercategory_encoding, target)  # keys locked to the same mean


def test_concept_prompts_state_what_they_ask_and_change_only_what_they_say():
    from perfusion.world.families.concept_prompts import concept_prompts
    from perfusion.world.families.controls import verbal_description

    instance = evaluation_instance("cat", 2)
    prompts = concept_prompts(instance)
    assert len(prompts) == 12
    assert {prompt.kind for prompt in prompts} == {"scene", "second object", "size and position", "property"}
    small = next(p for p in prompts if p.stated.get("size") == "small")
    assert (
        small.text("<mycat>") == "a small <mycat> at the left"
        and small.text("orange cat") == "a small orange cat at the left"
    )
    recoloured = next(p for p in prompts if "colour" in p.stated)
    assert recoloured.stated["colour"] != instance.colour_name and set(recoloured.changes) == {"colour"}
    described = verbal_description(instance, leave_out=frozenset(recoloured.changes))
    assert instance.colour_name not in described.split() and instance.category in described.split()


def test_alignment_reads_each_stated_property():
    from perfusion.world.families.concept_prompts import ConceptPrompt
    from perfusion.world.families.scoring import alignment

    probabilities = {head: torch.zeros(1, len(classes)) for head, classes in HEAD_CLASSES.items()}
    for head, value in (("background", "blue"), ("position", "left"), ("size", "small"), ("count", 1)):
        probabilities[head][0, HEAD_CLASSES[head].index(value)] = 1.0
    reading = Reading(probabilities, torch.zeros(1, 1), torch.zeros(1, 4))
    prompt = ConceptPrompt(
        "{} at the left", prefix="small", stated={"size": "large", "position": "left", "background": "blue"}
    )
    assert alignment(reading, 0, prompt, "cat") == {"background": True, "position": True, "size": False}


def test_eye_labels_are_stored_by_split_and_join_a_batch_as_accept_only(tmp_path):
    """A person's verdicts on generated images: kept per split (the audit split is never trained on), and added to a
    judge batch with every head but accept ignored."""
    import json

    import numpy as np

    from perfusion.world.families.eye_labels import EyeLabels, label
    from perfusion.world.families.train_judge import with_eye_labels

    images = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    captions = [f"a cat {n}" for n in range(6)]
    np.savez_compressed(tmp_path / "a" / "images.npz", images=images, captions=json.dumps(captions))
    store = tmp_path / "labels.npz"
    label(tmp_path / "a", "train", {1, 4}, store)
    with pytest.raises(SystemExit, match="already"):
        label(tmp_path / "a", "audit", set(), store)  # the same images never in both splits
    labels = EyeLabels.load(store)
    assert labels.accepted.tolist() == [True, False, True, True, False, True] and len(labels.split("audit")) == 0
    batch = labelled_batch(random.Random(0), SMALL)
    extended, stacked = with_eye_labels(batch, batch.images, labels.split("train"), 5, torch.Generator().manual_seed(0))
    count = len(batch.images)
    assert len(extended.images) == len(stacked) == count + 5
    assert set(extended.targets["accept"][count:].tolist()) <= {0, 1}
    assert (extended.targets["category"][count:] == IGNORE).all() and (extended.identity[count:] == -1).all()
    assert not extended.regression_mask[count:].any()


def test_unprompted_generations_are_stored_as_refused(tmp_path, tiny_pipe):
    """Empty-prompt generations are negatives by rule: every one refused, its own split, one image per seed."""
    from perfusion.world.families.eye_labels import UNPROMPTED, EyeLabels, collect_unprompted

    path = tmp_path / "unprompted.npz"
    labels = collect_unprompted(tiny_pipe, 3, 5, path)
    again = EyeLabels.load(path)
    assert len(again) == 3 and not again.accepted.any() and set(again.splits) == {UNPROMPTED}
    assert (again.images == labels.images).all() and not (again.images[0] == again.images[1]).all()


def test_a_collection_holds_one_image_per_fresh_caption_and_a_numbered_sheet(tmp_path, tiny_pipe):
    import json

    import numpy as np

    from perfusion.world.families.eye_labels import collect, generate_one_each
    from perfusion.world.families.sampling import sampling_defaults

    collect(tiny_pipe, 3, 7, tmp_path / "c")
    data = np.load(tmp_path / "c" / "images.npz")
    captions = json.loads(str(data["captions"]))
    assert len(data["images"]) == len(captions) == 3 and len(set(captions)) == 3
    assert (tmp_path / "c" / "sheet-00.png").exists()
    guidance = sampling_defaults(None, None)[1]
    again = generate_one_each(tiny_pipe, captions[1:], 8, guidance)  # image n comes from seed first_seed + n alone
    difference = np.abs(again[0].astype(int) - data["images"][1]).max()
    assert difference <= 2  # within the last bits: another batch size may round differently
    assert np.abs(again[0].astype(int) - data["images"][2]).max() > 20  # another caption and seed differ


def test_regenerated_renders_keep_every_label_and_join_a_batch(tmp_path, tiny_pipe):
    """Renders regenerated part of the way by the base model: scene n from seed first + n, every head labelled as
    the render is, stored and reloaded unchanged, and appended to a judge batch with their targets."""
    from perfusion.world.families.regenerated import HEADS, Regenerated, collect, scene
    from perfusion.world.families.train_judge import with_regenerated

    store = collect(tiny_pipe, 3, 40, batch_size=2, log=lambda message: None)
    render, caption, labels, values, known = scene(41)
    assert store.captions[1] == caption and store.targets[1].tolist() == labels and store.seeds.tolist() == [40, 41, 42]
    assert labels[HEADS.index("accept")] == 1 and labels[HEADS.index("category")] != IGNORE
    assert (store.regression[1] == values).all() and store.regression_mask[1].tolist() == known.tolist()
    assert store.images.shape == (3, 64, 64, 3) and not (store.images[1] == np.asarray(render)).all()
    store.save(tmp_path / "regenerated.npz")
    again = Regenerated.load(tmp_path / "regenerated.npz")
    assert (again.images == store.images).all() and (again.targets == store.targets).all()
    batch = labelled_batch(random.Random(0), SMALL)
    extended, stacked = with_regenerated(batch, batch.images, again, 4, torch.Generator().manual_seed(0))
    count = len(batch.images)
    assert len(extended.images) == len(stacked) == count + 4
    assert (extended.targets["accept"][count:] == 1).all() and (extended.targets["category"][count:] != IGNORE).all()
    assert extended.regression_mask[count:].any(1).all() and (extended.identity[count:] == -1).all()


def test_a_second_blind_labelling_sets_the_consensus_the_audit_is_scored_on(tmp_path):
    """relabel stores a second verdict beside the first; the audit reports the eye's self-agreement and the judge's
    figures on the images both labellings agree on, beside those against the first."""
    import json

    from perfusion.world.families.eye_labels import NOT_RELABELLED, EyeLabels, audit, label, relabel

    images = np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    np.savez_compressed(tmp_path / "a" / "images.npz", images=images, captions=json.dumps(["a cat"] * 4))
    store = tmp_path / "labels.npz"
    label(tmp_path / "a", "audit", {0, 1}, store)
    assert (EyeLabels.load(store).second == NOT_RELABELLED).all() and not EyeLabels.load(store).sure.any()
    relabel(tmp_path / "a", {0, 2}, store)  # agrees on 0 (rejected) and 3 (accepted)
    labels = EyeLabels.load(store).split("audit")
    assert labels.second.tolist() == [0, 1, 0, 1] and labels.sure.tolist() == [True, False, False, True]

    class AcceptsAll:
        def read(self, batch):
            from perfusion.world.families.judge import Reading

            count = len(batch)
            accept = torch.tensor([[0.0, 1.0]]).repeat(count, 1)
            return Reading({"accept": accept}, torch.zeros(count, 1), torch.zeros(count, 2))

    summary = audit(AcceptsAll(), labels, tmp_path / "audit.png")
    assert summary["agreement"] == 0.5 and summary["eye_self_agreement"] == 0.5
    assert summary["consensus"]["images"] == 2 and summary["consensus"]["false_accepts"] == 1.0
    assert summary["accept_auc"] == 0.5  # one probability for every image ranks nothing
    with pytest.raises(SystemExit, match="kept, not overwritten"):
        relabel(tmp_path / "a", set(), store)
    with pytest.raises(SystemExit, match="not in"):
        (tmp_path / "b").mkdir()
        np.savez_compressed(tmp_path / "b" / "images.npz", images=images[::-1] // 2, captions="[]")
        relabel(tmp_path / "b", set(), store)


def test_rejected_numbers_that_are_not_numbers_get_one_line():
    from perfusion.world.families.eye_labels import image_numbers

    assert image_numbers("3, 17,42,") == {3, 17, 42}
    with pytest.raises(SystemExit, match="comma-separated image numbers"):
        image_numbers("3,x")


def test_ranking_auc_counts_ordered_pairs_and_half_the_ties():
    from perfusion.world.families.eye_labels import ranking_auc

    person = np.array([True, True, False, False])
    assert ranking_auc(np.array([0.9, 0.8, 0.1, 0.2]), person) == 1.0
    assert ranking_auc(np.array([0.1, 0.2, 0.9, 0.8]), person) == 0.0
    assert ranking_auc(np.array([0.9, 0.5, 0.5, 0.1]), person) == 0.875  # 3 of 4 pairs ordered, 1 tied


def test_fine_tuning_starts_from_a_judge_file_and_keeps_its_own_checkpoint(tmp_path):
    """--start-from loads a judge file's weights into a new schedule (at learning rate 0 its parameters come out
    unchanged, to fp16; normalisation statistics still move), and the run's state goes to its own checkpoint."""
    from perfusion.world.families.train_judge import JudgeTrainingConfig, train

    start = tmp_path / "start.safetensors"
    torch.manual_seed(3)
    save_judge(JudgeNet(JudgeNetConfig()), start, {})
    config = JudgeTrainingConfig(steps=1, learning_rate=0.0, warmup_steps=1, eye_labelled=0, unprompted=0)
    checkpoint, out = tmp_path / "run.pt", tmp_path / "out.safetensors"
    net = train(config, False, 0, out, start_from=start, checkpoint=checkpoint, log=print)
    loaded = dict(Judge.load(start).net.named_parameters())
    assert all(torch.equal(value, loaded[name]) for name, value in net.named_parameters())
    assert torch.load(checkpoint, weights_only=False)["step"] == 1
    assert Judge.load(out).metadata["start_from"] == str(start)


def test_a_judge_run_refuses_to_overwrite_or_to_run_without_its_data(tmp_path, monkeypatch):

    config = train_judge.JudgeTrainingConfig(steps=1, eye_labelled=0, unprompted=0)
    existing = tmp_path / "run.pt"
    existing.write_bytes(b"state")
    with pytest.raises(SystemExit, match="--resume"):
        train_judge.train(config, False, 0, tmp_path / "out.safetensors", checkpoint=existing)
    start = tmp_path / "start.safetensors"
    with pytest.raises(SystemExit, match="overwrite the judge it starts from"):
        train_judge.train(config, False, 0, start, start_from=start, checkpoint=tmp_path / "new.pt")
    with pytest.raises(SystemExit, match="--start-from"):
        train_judge.train(config, False, 0, tmp_path / "o.safetensors", start_from=start, checkpoint=tmp_path / "n.pt")
    monkeypatch.setattr(train_judge, "REGENERATED_PATH", tmp_path / "absent.npz")
    with pytest.raises(SystemExit, match="--regenerated 0"):
        regenerated = train_judge.JudgeTrainingConfig(steps=1, regenerated=4)
        train_judge.train(regenerated, False, 0, tmp_path / "o.safetensors", checkpoint=tmp_path / "n.pt")
    assert existing.read_bytes() == b"state" and not (tmp_path / "n.pt").exists()


def test_regenerated_rows_keep_their_labels_when_sampled():
    """Sampled rows keep each image with its own targets and regression values (row n's image is filled with n)."""
    from perfusion.world.families.regenerated import HEADS, Regenerated

    count = 7
    store = Regenerated(
        images=np.repeat(np.arange(count, dtype=np.uint8), 64 * 64 * 3).reshape(count, 64, 64, 3),
        targets=np.repeat(np.arange(count)[:, None], len(HEADS), 1),
        regression=np.repeat(np.arange(count, dtype=np.float32)[:, None], 3, 1),
        regression_mask=np.ones((count, 3), bool),
        strengths=np.full(count, 0.25, np.float32),
        captions=[""] * count,
        seeds=np.arange(count),
    )
    images, targets, regression, _ = store.sample_rows(20, torch.Generator().manual_seed(0))
    rows = (images[:, 0, 0, 0] * 255).round().long()
    assert len(set(rows.tolist())) > 1
    assert all(torch.equal(targets[head], rows) for head in HEADS) and torch.equal(regression[:, 0].long(), rows)


def test_a_head_weight_multiplies_that_heads_loss_and_an_unknown_head_is_refused():
    """Same batch, same weights: with pattern=3 the pattern part is 3x (exactly, up to float rounding), others equal."""
    batch = labelled_batch(random.Random(3), BatchRecipe(identity_instances=4, neighbours=1, pairs=2, negatives=2))
    torch.manual_seed(0)
    net = JudgeNet(JudgeNetConfig(widths=(8, 8, 8, 8))).eval()
    plain = train_judge.JudgeTrainingConfig()
    weighted = train_judge.JudgeTrainingConfig(head_weights={"pattern": 3.0})
    _, parts = train_judge.judge_loss(net, batch, plain, batch.images)
    _, weighted_parts = train_judge.judge_loss(net, batch, weighted, batch.images)
    assert weighted_parts["pattern"] == pytest.approx(3 * parts["pattern"], rel=1e-5)
    assert weighted_parts["colour"] == pytest.approx(parts["colour"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown heads shape"):
        train_judge.JudgeTrainingConfig(head_weights={"shape": 2.0})
    with pytest.raises(SystemExit):
        train_judge.main(["--head-weight", "pattern:3"])


def _reading_of(instance, shape_values=None) -> Reading:
    """A reading that says exactly ``instance`` (one row), with ``shape_values`` in place of its own if given."""
    from perfusion.world.families.judge_net import PATTERN_SCALE, REGRESSION_OUTPUTS, SHAPE_SLICES

    truth = {
        "colour": instance.colour_name,
        "second_colour": instance.second_colour_name,
        "pattern": instance.pattern,
        "accessory": instance.accessory is not None,
        "category": instance.category,
    }
    probabilities = {
        head: torch.nn.functional.one_hot(
            torch.tensor([classes.index(truth[head]) if head in truth else 0]), len(classes)
        ).float()
        for head, classes in HEAD_CLASSES.items()
    }
    regression = torch.zeros(1, REGRESSION_OUTPUTS)
    regression[0, SHAPE_SLICES[instance.category]] = torch.tensor(shape_values or instance.shape_values)
    regression[0, PATTERN_SCALE] = instance.pattern_scale
    return Reading(probabilities, regression, torch.zeros(1, 4))


def test_the_stated_match_counts_only_what_the_verbal_oracle_says():
    """Shape parameters in their middle third have no word and are left out; a worded one read in the middle third
    is a miss; a plain instance's pattern is not stated."""
    from dataclasses import replace

    from perfusion.world.families.metrics import stated_match

    instance = replace(evaluation_instance("cat", 0), pattern="plain", accessory=None)
    values = [0.1, 0.5] + [0.9] * (len(instance.shape_values) - 2)
    instance = replace(instance, shape_values=tuple(values))
    names = [parameter.name for parameter in instance.family.shapes]
    worded = {n for n, v, p in zip(names, values, instance.family.shapes) if p.words(v)}
    assert worded == {"build", "ears", "tail", "legs"}  # cat: head and curl have no words; 0.5 has none either
    matches = stated_match(_reading_of(instance), 0, instance)
    assert set(matches) == {"colour"} | {f"shape:{name}" for name in worded}
    assert all(matches.values())
    misread = [0.5] + values[1:]  # build, "slim" at 0.1, read in the middle third
    matches = stated_match(_reading_of(instance, misread), 0, instance)
    assert matches["shape:build"] is False and matches["shape:tail"] is True
    assert stated_match(_reading_of(instance), 0, instance, frozenset({"colour"})).keys().isdisjoint({"colour"})


def test_a_shape_value_falls_in_the_third_its_caption_word_names():
    from perfusion.world.families.categories import CATEGORIES, third

    build = CATEGORIES["cat"].shapes[0]
    for value, expected in ((0.0, 0), (0.33, 0), (1 / 3, 1), (0.5, 1), (2 / 3, 1), (0.67, 2), (1.0, 2)):
        assert third(value) == expected
        assert bool(build.words(value)) == (expected != 1)


def test_the_base_models_bars_come_with_the_judges_ceiling_on_the_prompts_own_scenes():
    # renders of exactly what each prompt asks, read by the shipped judge: the instrument must read its own world
    from perfusion.world.families.base_eval import ceiling, prompt_set

    reached = ceiling(Judge.load(), prompt_set(24))
    assert {"category", "background"} <= set(reached) and all(0.0 <= share <= 1.0 for share in reached.values())
    assert reached["category"] >= 0.8 and reached["background"] >= 0.9  # measured 1.00 and 1.00 (judge step 3,200)


def test_sampling_settings_are_tuned_on_prompts_the_bars_do_not_use():
    from perfusion.world.families.base_eval import EVAL_FIRST_SEED, TUNING_FIRST_SEED, prompt_set

    bars = {caption.text for _, caption in prompt_set(128)}
    tuning = [caption.text for _, caption in prompt_set(128, TUNING_FIRST_SEED)]
    assert TUNING_FIRST_SEED - EVAL_FIRST_SEED >= 10_000  # room for 10,000 bar prompts before the sets overlap
    assert sum(text in bars for text in tuning) <= 2  # fresh scenes: only a bare "a photo of a cat" can repeat


def test_the_base_evaluation_tells_a_pattern_adjective_from_a_pattern_phrase():
    # a causal text encoder can carry "striped" into the noun after it, never "with stripes": the two are reported apart
    from perfusion.world.families.base_eval import pattern_form, prompt_set

    forms = {}
    for spec, caption in prompt_set(200):
        form = pattern_form(spec, caption)
        if form is not None:
            forms.setdefault(form, []).append(caption.text)
    assert set(forms) == {"adjective", "phrase", "plain"}
    assert all(" with " in text for text in forms["phrase"])
    assert not any(
        word in text.split() for text in forms["phrase"] for word in ("striped", "spotted", "patched", "banded")
    )


def test_the_seen_member_control_reports_its_ceiling_beside_it(tmp_path, tiny_pipe):
    # the judge on fresh renders of the seen member (its own ceiling) and the verbal oracle (the base model's)
    from perfusion.world.families.lab_report import seen_member_ceiling
    from perfusion.world.families.scoring import Galleries

    judge = Judge.load()
    result = seen_member_ceiling(tiny_pipe, judge, Galleries(judge), tmp_path, ["cat"])["cat"]
    assert result["renders_recognised"] >= 0.5  # the shipped judge on 8 clean renders of a member it trained on
    assert 0.0 <= result["verbal_oracle"]["recognised"] <= 1.0
    assert (tmp_path / "seen-cat-ceiling.png").is_file()


def test_the_seen_members_photos_come_with_their_masks_unless_a_user_has_photos_alone():
    from perfusion.world.families.lab_report import seen_photos

    instance, shots, images = seen_photos("cat")
    assert instance.category == "cat" and len(shots) == len(images) == 5
    assert all(image.mask is not None for image in images)
    _, _, bare = seen_photos("cat", masks=False)
    assert all(image.mask is None for image in bare)
    assert [image.image.tobytes() for image in bare] == [image.image.tobytes() for image in images]  # same photos


def test_perfusion_takes_the_seen_member_control_and_leaves_the_pipeline_as_it_was(tmp_path, tiny_pipe):
    from perfusion.pipeline.loader import loaded_tokens
    from perfusion.world.families.lab_report import seen_member
    from perfusion.world.families.scoring import Galleries

    judge = Judge.load()
    result = seen_member(tiny_pipe, judge, Galleries(judge), tmp_path, {"steps": 2, "batch_size": 2}, ["mug"], "-t")
    mug = result["mug"]
    assert mug["images"] == 24 and 0.0 <= mug["recognised"] <= 1.0 and mug["value_ratio"] > 0
    assert (tmp_path / "seen-mug-t.png").is_file()
    assert loaded_tokens(tiny_pipe) == []  # the concept was unloaded


def test_a_baseline_takes_the_seen_member_control_on_a_copy_of_the_pipeline(tmp_path, tiny_pipe):
    # DreamBooth on the same photos, scored the same way; the pipeline it was given still holds the base weights
    from perfusion.world.families.lab_report import seen_member_baseline
    from perfusion.world.families.scoring import Galleries

    judge = Judge.load()
    before = {name: tensor.clone() for name, tensor in tiny_pipe.unet.state_dict().items()}
    settings = {"steps": 2, "num_class_images": 2, "class_inference_steps": 2, "lr": 1e-3}
    from perfusion.baselines import dreambooth
    from perfusion.world.families.sampling import model_guidance

    used, train = [], dreambooth.train
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dreambooth, "train", lambda *args, **kwargs: used.append(args[4]) or train(*args, **kwargs))
        result = seen_member_baseline(tiny_pipe, judge, Galleries(judge), tmp_path, "dreambooth", settings, ["cat"])
    assert used[0].use_masks and used[0].class_guidance == model_guidance()  # the photos' masks; the model's guidance
    cat = result["cat"]
    assert cat["steps"] == 2 and cat["images"] == 24 and 0.0 <= cat["recognised"] <= 1.0
    assert (tmp_path / "seen-cat-dreambooth.png").is_file()
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_concept_scores_report_how_near_the_concept_ranked_in_its_gallery():
    # the identity rank says how near a miss was: renders of the concept rank it near first, renders of a random
    # member of its gallery push it down
    from perfusion.world.families.concept_prompts import concept_prompts
    from perfusion.world.families.scenes import photos
    from perfusion.world.families.scoring import Galleries, score_concept_images

    judge, instance = Judge.load(), evaluation_instance("cat", 1000)
    galleries, prompt = Galleries(judge), concept_prompts(instance)[0]  # a background, no change to the concept
    own = score_concept_images(judge, instance, prompt, [i for i, _, _ in photos(instance, 6, seed=3)], galleries)
    other = galleries(instance, {}).members[-1]  # one of the random members
    theirs = score_concept_images(judge, instance, prompt, [i for i, _, _ in photos(other, 6, seed=3)], galleries)
    assert len(own.ranks) == 6 and all(0 <= rank <= 9 for rank in own.ranks + theirs.ranks)
    assert own.summary()["identity_rank"] < 1.0 < theirs.summary()["identity_rank"]
