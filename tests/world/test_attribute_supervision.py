"""The text encoder's attribute supervision: which tokens are asked to state which colour or pattern, and the loss."""

import random

import pytest
import torch
from transformers import CLIPTokenizer

from perfusion.world.basemodel.attributes import AttributeSupervision
from perfusion.world.basemodel.grounding import WORD_PATTERN
from perfusion.world.families import captions, scenes
from perfusion.world.families.categories import PATTERNS
from perfusion.world.families.palette import COLOURS
from perfusion.world.model_path import FAMILIES_MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer")


def one_object_spec():
    rng = random.Random(0)
    while True:
        spec = scenes.sample_spec(rng)
        if spec.second is None:
            return spec


def test_a_stated_colour_and_pattern_are_read_at_their_words_and_at_the_noun_after_them():
    spec = one_object_spec()
    noun = spec.first.instance.category
    words = f"a white striped {noun} with black spots on a red background".split()
    found = captions.attribute_words(spec, words)
    assert found == [
        (1, 3, "colour", list(COLOURS).index("white")),
        (2, 3, "pattern", PATTERNS.index("stripes")),
        (5, None, "colour", list(COLOURS).index("black")),  # after the noun: the causal encoder cannot carry it back
        (6, None, "pattern", PATTERNS.index("spots")),
    ]  # "red" names the background, not the object


def test_targets_are_the_last_token_of_each_word_and_of_the_noun(tokenizer):
    spec = one_object_spec()
    noun = spec.first.instance.category
    caption = f"a long - tailed gray {noun} with white patches"
    targets = AttributeSupervision(tokenizer, 8).targets([spec], [caption])
    ids = tokenizer(caption).input_ids
    read = {
        name: [(tokenizer.convert_ids_to_tokens(ids[p]).removesuffix("</w>"), v) for p in positions.tolist()]
        for name, (_, positions, values) in targets.items()
        for v in [values.tolist()]
    }
    assert [word for word, _ in read["colour"]] == ["gray", noun, "white"]
    assert [word for word, _ in read["pattern"]] == ["patches"]


def test_the_heads_train_the_encoder_to_tell_pattern_words_apart(train_tiny_heads):
    spec = one_object_spec()
    noun = spec.first.instance.category
    texts = [f"a {word} {noun}" for word in ("striped", "spotted", "patched", "plain")]
    first, last, trainer, resumed = train_tiny_heads(texts, spec, attribute_weight=1.0)
    assert last["attributes"] < 0.3 * first["attributes"]
    for name, tensor in trainer.attributes.state_dict().items():
        assert torch.equal(resumed.attributes.state_dict()[name], tensor)


def test_shape_words_are_whole_words_of_their_object():
    spec = one_object_spec()
    noun = spec.first.instance.category
    words = WORD_PATTERN.findall(f"a large long-tailed slim {noun} on a tall background")
    found = [
        (words[end], noun_index, captions.SHAPE_PHRASES[phrase])
        for end, noun_index, phrase in captions.shape_words(spec, words)
    ]
    assert found == [("tailed", 6, "long-tailed"), ("slim", 6, "slim")]  # not "long" alone, not the background's "tall"


def test_the_noun_is_asked_for_every_shape_word_before_it(tokenizer):
    spec = one_object_spec()
    noun = spec.first.instance.category
    caption = f"a short-legged chubby {noun}"
    samples, positions, labels = AttributeSupervision(tokenizer, 8).shape_targets([spec], [caption])
    ids = tokenizer(caption).input_ids
    named = {
        tokenizer.convert_ids_to_tokens(ids[p]).removesuffix("</w>"): {
            captions.SHAPE_PHRASES[i] for i in row.nonzero().flatten().tolist()
        }
        for p, row in zip(positions.tolist(), labels)
    }
    assert named == {"legged": {"short-legged"}, "chubby": {"short-legged", "chubby"}, noun: {"short-legged", "chubby"}}
    assert samples.tolist() == [0, 0, 0]


def test_a_checkpoint_from_before_the_shape_head_resumes_with_it_new(train_tiny_heads):
    spec = one_object_spec()
    noun = spec.first.instance.category
    texts = [f"a {word} {noun}" for word in ("slim", "chubby", "short-legged", "long-legged")]
    _, _, trainer, fresh = train_tiny_heads(texts, spec, steps=1, attribute_weight=1.0)
    state = torch.load(trainer.checkpoint_path, weights_only=False)
    state["attribute_heads"] = {k: v for k, v in state["attribute_heads"].items() if not k.startswith("heads.shape.")}
    old_heads = [trainer.attributes.heads[name] for name in ("colour", "pattern")]
    old_optimizer = torch.optim.AdamW([p for head in old_heads for p in head.parameters()])  # 4 tensors, not 6
    state["attribute_optimizer"] = old_optimizer.state_dict()
    with torch.no_grad():
        fresh.attributes.heads["colour"].weight.zero_()
    shape_before = fresh.attributes.heads["shape"].weight.clone()
    messages = []
    fresh.log = messages.append
    fresh.load(state)
    assert any("heads.shape.weight" in message for message in messages)
    assert torch.equal(fresh.attributes.heads["colour"].weight, state["attribute_heads"]["heads.colour.weight"])
    assert torch.equal(fresh.attributes.heads["shape"].weight, shape_before)  # kept as it was made
