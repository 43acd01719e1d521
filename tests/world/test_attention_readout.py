"""The attribute readout through cross-attention: which objects are asked to state what, the readout's arithmetic,
and that training lowers it and a checkpoint keeps its heads."""

import random

import pytest
import torch
from transformers import CLIPTokenizer

from perfusion.world.basemodel.grounding import CaptionGrounding, object_boxes
from perfusion.world.basemodel.readout import box_readout, readout_targets
from perfusion.world.families import scenes
from perfusion.world.families.categories import PATTERNS
from perfusion.world.families.palette import COLOURS
from perfusion.world.model_path import FAMILIES_MODEL_DIR


@pytest.fixture(scope="module")
def grounding():
    return CaptionGrounding(CLIPTokenizer.from_pretrained(FAMILIES_MODEL_DIR / "tokenizer"))


def spec_with(objects: int):
    rng = random.Random(0)
    while True:
        spec = scenes.sample_spec(rng)
        if len(spec.instances) == objects:
            return spec


def test_an_object_states_its_pattern_from_a_phrase_and_its_colour_only_before_the_noun(grounding):
    spec = spec_with(1)
    noun = spec.first.instance.category
    caption = f"a white {noun} with black stripes on a red background"
    targets = readout_targets(grounding, [spec], [caption])
    read = {(t.attribute, t.value) for t in targets}
    assert read == {("colour", list(COLOURS).index("white")), ("pattern", PATTERNS.index("stripes"))}
    assert all(t.sample == 0 for t in targets)
    tokens = grounding.tokenizer(caption).input_ids
    words = [grounding.tokenizer.convert_ids_to_tokens(tokens[i]).removesuffix("</w>") for i in targets[0].tokens]
    assert words == ["white", noun, "black", "stripes"]  # the object's own words: not "a", "with", the background


def test_each_object_of_a_pair_is_read_in_its_own_box(grounding):
    spec = spec_with(2)
    first, second = (instance.category for instance in spec.instances)
    targets = readout_targets(grounding, [spec], [f"a spotted {first} next to a {second} with patches"])
    boxes = {t.value: t.box for t in targets if t.attribute == "pattern"}
    assert boxes == {PATTERNS.index("spots"): object_boxes(spec)[0], PATTERNS.index("patches"): object_boxes(spec)[1]}


def test_an_empty_caption_states_nothing(grounding):
    assert readout_targets(grounding, [spec_with(1)], [""]) == []


def test_the_readout_is_the_box_cells_attention_weighted_mean_of_the_objects_own_states():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 4, 3, generator=generator).softmax(-1)  # (objects, queries, tokens)
    states = torch.randn(2, 3, 5, generator=generator)
    mask = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    own = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])  # the first object's tokens 1 and 2, the second's 0 and 2
    first = (attention[0, 0] + 0.5 * attention[0, 1])[1:]
    second = attention[1, 3][[0, 2]]
    expected = torch.stack([first @ states[0, 1:] / first.sum(), second @ states[1, [0, 2]] / second.sum()])
    torch.testing.assert_close(box_readout(attention, states, mask, own), expected, rtol=1e-5, atol=1e-6)


def test_training_lowers_the_readout_loss_and_a_checkpoint_keeps_its_heads(train_tiny_heads):
    spec = spec_with(1)
    noun = spec.first.instance.category
    texts = [f"a {noun} with {word}" for word in ("stripes", "spots", "patches", "a band")]
    first, last, trainer, resumed = train_tiny_heads(texts, spec, readout_weight=1.0)
    assert last["readout"] < 0.5 * first["readout"]  # cross-entropy over 5 patterns starts near log 5
    for name, tensor in trainer.readout.state_dict().items():
        assert torch.equal(resumed.readout.state_dict()[name], tensor)


def test_the_readout_loss_alone_reaches_the_unets_attention(train_tiny_heads):
    # the states are detached; the gradient must still reach where the cross-attention looks (its queries and keys)
    spec = spec_with(1)
    noun = spec.first.instance.category
    texts = [f"a {noun} with {word}" for word in ("stripes", "spots")]
    _, _, trainer, _ = train_tiny_heads(texts, spec, steps=0, readout_weight=1.0)
    trainer.unet.zero_grad(set_to_none=True)
    noisy = torch.randn(2, 4, 16, 16)
    with trainer.attention.recording():
        states = trainer.encode_captions(texts)
        trainer.unet(noisy, torch.tensor([500, 500]), states)
    trainer.readout.loss(trainer.attention.maps, states, [spec] * 2, texts).backward()
    for part in ("to_q", "to_k"):
        grads = [getattr(m, part).weight.grad for n, m in trainer.unet.named_modules() if n.endswith("attn2")]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
