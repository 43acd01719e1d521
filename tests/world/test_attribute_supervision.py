"""The text encoder's attribute supervision: which tokens are asked to state which colour or pattern, and the loss."""

import random
import shutil

import pytest
import torch
from transformers import CLIPTokenizer

from perfusion.world.basemodel import train_base as train
from perfusion.world.basemodel.attributes import AttributeSupervision
from perfusion.world.basemodel.config import UnetTrainingConfig
from perfusion.world.basemodel.data import families_source
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


def test_the_heads_train_the_encoder_to_tell_pattern_words_apart(tmp_path, tokenizer, tiny_architecture):
    for part in ("tokenizer", "vae"):  # a checkpoint records which autoencoder its latents came from
        shutil.copytree(FAMILIES_MODEL_DIR / part, tmp_path / part)
    torch.manual_seed(0)
    config = UnetTrainingConfig(
        batch_size=4, unet_learning_rate=1e-3, text_learning_rate=3e-3, warmup_steps=0, attribute_weight=1.0
    )
    trainer = train.UnetTrainer(tmp_path, families_source(), tiny_architecture, config, print)
    spec = one_object_spec()
    noun = spec.first.instance.category
    texts = [f"a {word} {noun}" for word in ("striped", "spotted", "patched", "plain")]
    latents = torch.randn(4, 4, 16, 16)
    first = trainer.training_step(latents, texts, [spec] * 4)
    for _ in range(30):
        last = trainer.training_step(latents, texts, [spec] * 4)
    assert last["attributes"] < 0.3 * first["attributes"]
    trainer.save()
    resumed = train.UnetTrainer(tmp_path, families_source(), tiny_architecture, config, print)
    resumed.load(torch.load(trainer.checkpoint_path, weights_only=False))
    for name, tensor in trainer.attributes.state_dict().items():
        assert torch.equal(resumed.attributes.state_dict()[name], tensor)
