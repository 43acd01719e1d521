"""Where the edit acts (issue 33, point 3). Under the default scope ("except-word") a concept's own plain
supercategory word keeps the stock K and V, so in "<mycat> next to a cat" the cat stays a cat; "prompt" also leaves
the padding after the first end-of-text stock. Concepts trained before (no recorded scope) or with
gate_scope="all" keep the paper's edit at every position."""

from dataclasses import replace

import pytest
import torch

from perfusion.concept.format import ConceptFileError
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.processor import PerfusionAttnProcessor
from perfusion.pipeline.settings import set_concept_options
from perfusion.pipeline.text import gate_scope
from perfusion.testing import handmade_concept, small_corpus
from perfusion.training.trainer import TrainingConfig, TrainingError

CAPTIONS = small_corpus()


@pytest.mark.parametrize(
    "scope, expected",
    [
        ("all", [True] * 10),
        ("except-word", [True] * 6 + [False] + [True] * 3),
        ("prompt", [True] * 6 + [False, True, False, False]),
    ],
)
def test_each_scope_marks_its_positions(scope, expected):
    ids = torch.tensor([49406, 320, 50000, 1131, 531, 320, 2368, 49407, 49407, 49407])  # a <c> next to a cat </s> ...
    assert gate_scope(ids, 49407, [2368], scope).tolist() == expected


def values_by_position(pipe, concept, prompt):
    """V of every position of ``prompt`` in one cross-attention layer, edited, beside the stock W_V e; ``concept``
    is loaded first (None: the concepts loaded already), every gate half open wherever s(e) is near 0."""
    if concept is not None:
        load_concepts(pipe, concept, captions=CAPTIONS)
    for token in find_runtime(pipe).concepts:
        set_concept_options(pipe, token, beta=0.0, tau=1.0)
    processor = next(p for p in pipe.unet.attn_processors.values() if isinstance(p, PerfusionAttnProcessor))
    attn = pipe.unet.get_submodule(processor.layer)
    seen = {}

    def capture(attn_, encodings, key, value):
        edited = PerfusionAttnProcessor.edit(processor, attn_, encodings, key, value)
        seen.update(stock=value.detach(), edited=edited[1].detach())
        return edited

    processor.edit = capture
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids[0]
    with torch.no_grad():
        embeds = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        pipe.unet(torch.zeros(1, 4, 8, 8), 10, embeds)
    del processor.edit
    assert attn is not None and "edited" in seen
    return ids, seen["stock"][0], seen["edited"][0]


@pytest.mark.parametrize("scope", ["except-word", "prompt", "all"])
def test_the_plain_word_stays_stock_unless_the_scope_is_all(tiny_pipe, scope):
    concept = handmade_concept(tiny_pipe)
    concept = replace(concept, training={"gate_scope": scope})
    ids, stock, edited = values_by_position(tiny_pipe, concept, "a <mycat> next to a cat")
    cat = tiny_pipe.tokenizer("cat", add_special_tokens=False).input_ids
    at_cat = next(n + len(cat) - 1 for n in range(len(ids)) if ids[n : n + len(cat)] == cat)
    first_eos = ids.index(tiny_pipe.tokenizer.eos_token_id)
    at_concept = ids.index(tiny_pipe.tokenizer.convert_tokens_to_ids("<mycat>"))
    changed = (edited - stock).abs().amax(-1) > 1e-6
    assert changed[at_concept]
    if scope == "all":  # the paper's edit: an open gate acts everywhere
        assert changed[at_cat] and changed[first_eos + 1 :].all()
    else:
        assert torch.equal(edited[at_cat], stock[at_cat])  # exactly W_V e: the plain cat is the stock cat
        assert changed[first_eos + 1 :].all() == (scope == "except-word")
        assert not changed[first_eos + 1 :].any() or scope == "except-word"


def test_a_concept_without_a_recorded_scope_keeps_the_papers_edit(tiny_pipe):
    """Concept files made before the scope was recorded were trained with the edit at every position."""
    concept = handmade_concept(tiny_pipe)
    assert "gate_scope" not in concept.training
    load_concepts(tiny_pipe, concept, captions=CAPTIONS)
    assert find_runtime(tiny_pipe)._registry["<mycat>"].scope == "all"


def test_training_records_its_scope_in_the_concept(tiny_pipe, tmp_path):
    from perfusion.testing import write_concept_images
    from perfusion.training.images import load_training_images
    from perfusion.training.trainer import train_concept

    images = load_training_images(write_concept_images(tmp_path / "photos"))
    config = TrainingConfig(steps=2, batch_size=1, gradient_accumulation=1)
    result = train_concept(tiny_pipe, images, "<mycat>", "cat", config, captions=CAPTIONS, progress=False)
    assert result.concept.training["gate_scope"] == "except-word"
    with pytest.raises(TrainingError, match="gate_scope"):
        TrainingConfig(gate_scope="padding")


def test_a_file_with_an_unknown_scope_is_refused_in_one_line(tiny_pipe, tmp_path):
    concept = replace(handmade_concept(tiny_pipe), training={"gate_scope": "everywhere"})
    with pytest.raises(ConceptFileError, match="gate_scope 'everywhere' is not one of except-word, prompt, all"):
        concept.validate("c.safetensors")


def test_beside_a_concept_of_another_scope_the_plain_word_still_keeps_w_e(tiny_pipe):
    """A new concept (except-word) next to an old one (all): at the new one's plain word the whole edit is off, so V
    is the stock W_V e there, not W_V e plus the other concept's target without its removal."""
    cat = replace(handmade_concept(tiny_pipe, "<mycat>", "cat", seed=1), training={"gate_scope": "except-word"})
    mug = replace(handmade_concept(tiny_pipe, "<mymug>", "mug", seed=2), training={})  # made before: "all"
    load_concepts(tiny_pipe, [cat, mug], captions=CAPTIONS)
    ids, stock, edited = values_by_position(tiny_pipe, None, "a <mycat> and a <mymug> next to a cat")
    cat_ids = tiny_pipe.tokenizer("cat", add_special_tokens=False).input_ids
    at_cat = next(n + len(cat_ids) - 1 for n in range(len(ids)) if ids[n : n + len(cat_ids)] == cat_ids)
    at_mug = ids.index(tiny_pipe.tokenizer.convert_tokens_to_ids("<mymug>"))
    assert torch.equal(edited[at_cat], stock[at_cat])
    assert not torch.equal(edited[at_mug], stock[at_mug])


def test_a_checkpoint_of_another_scope_is_not_resumed(tiny_pipe, tmp_path):
    """A run begun before the default scope changed (no scope recorded: "all") is not silently finished as another."""
    from perfusion.testing import write_concept_images
    from perfusion.training.images import load_training_images
    from perfusion.training.trainer import train_concept

    images = load_training_images(write_concept_images(tmp_path / "photos"))
    checkpoint = tmp_path / "c.ckpt"
    config = TrainingConfig(steps=2, batch_size=1, gradient_accumulation=1, checkpoint_every=1, gate_scope="all")
    train_concept(tiny_pipe, images, "<mycat>", "cat", config, checkpoint=checkpoint, captions=CAPTIONS, progress=False)
    state = torch.load(checkpoint, weights_only=False)
    assert state["config"]["gate_scope"] == "all"
    longer = TrainingConfig(steps=4, batch_size=1, gradient_accumulation=1)
    with pytest.raises(TrainingError, match="gate_scope 'all', not 'except-word'"):
        train_concept(
            tiny_pipe,
            images,
            "<mycat>",
            "cat",
            longer,
            checkpoint=checkpoint,
            resume=True,
            captions=CAPTIONS,
            progress=False,
        )
