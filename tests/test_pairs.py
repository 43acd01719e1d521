"""Paired training images ("<token> next to a <word>"): where the object goes, and how training draws them."""

import numpy as np
import pytest
from PIL import Image

from perfusion.testing import write_concept_images
from perfusion.training.images import TrainingImage, load_training_images
from perfusion.training.pairs import pair_caption, paired_image, paired_images
from perfusion.training.trainer import ConceptTrainer, TrainingConfig, TrainingError

QUICK = dict(batch_size=4, gradient_accumulation=1, seed=0)


def square_object(size: int = 64) -> TrainingImage:
    """A 16 px white square at the top left of a blue image, on its mask."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = (0, 0, 200)
    pixels[4:20, 4:20] = 255
    mask = np.zeros((size, size), np.uint8)
    mask[4:20, 4:20] = 255
    return TrainingImage("square", Image.fromarray(pixels), Image.fromarray(mask))


@pytest.mark.parametrize("half, centre", [("left", 16), ("right", 48)])
def test_the_object_is_shrunk_onto_its_half_of_a_background_canvas(half, centre):
    paired = paired_image(square_object(), half, side=0.25)
    mask = np.asarray(paired.mask) >= 128
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - (centre - 0.5)) <= 1 and abs(ys.mean() - 31.5) <= 1
    assert xs.max() - xs.min() + 1 == 16  # 0.25 of 64 px
    pixels = np.asarray(paired.image)
    assert (pixels[~mask] == (0, 0, 200)).all()  # the canvas is the image's own background colour
    assert (pixels[mask].mean(0) > 200).all()


def test_a_paired_image_needs_a_mask():
    item = square_object()
    with pytest.raises(ValueError, match="mask"):
        paired_image(TrainingImage(item.name, item.image, None), "left", 0.4)
    assert len(paired_images([item, item], 0.4)) == 4


def test_the_caption_puts_the_concept_on_either_side():
    template = "a photo of a {} next to a {}"
    assert pair_caption(template, "<mycat>", "cup", True) == "a photo of a <mycat> next to a cup"
    assert pair_caption(template, "<mycat>", "cup", False) == "a photo of a cup next to a <mycat>"


def test_training_draws_paired_samples_with_their_captions(tiny_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    config = TrainingConfig(pair_probability=1.0, pair_words=("dog",), **QUICK)
    trainer = ConceptTrainer(tiny_pipe, images, "<mydisc>", "cat", config)
    assert trainer.pair_bank.means.shape[0] == 2 * 2 * len(images)  # two halves, mirrored
    *_, masks, ids, _ = trainer.micro_batch()
    texts = tiny_pipe.tokenizer.batch_decode(ids[0], skip_special_tokens=True)
    assert all("next to" in text and "dog" in text for text in texts), texts
    assert masks.sum() > 0

    plain = ConceptTrainer(tiny_pipe, images, "<mydisc>", "cat", TrainingConfig(**QUICK))
    assert plain.pair_bank is None
    texts = tiny_pipe.tokenizer.batch_decode(plain.micro_batch()[-2][0], skip_special_tokens=True)
    assert not any("next to" in text for text in texts)


def test_paired_training_refuses_missing_words(tiny_pipe, tmp_path):
    masked = load_training_images(write_concept_images(tmp_path / "disc"))
    with pytest.raises(TrainingError, match="word"):
        ConceptTrainer(tiny_pipe, masked, "<mydisc>", "cat", TrainingConfig(pair_probability=0.5, **QUICK))


def test_photos_without_masks_train_without_pairs(tiny_pipe, tmp_path):
    """Pairs are cut out along the objects' masks: without masks they are switched off, with a warning (a user with
    only photos must be able to train with the model's own recipe)."""
    plain = load_training_images(write_concept_images(tmp_path / "plain", alpha=False))
    config = TrainingConfig(pair_probability=0.5, pair_words=("dog",), **QUICK)
    with pytest.warns(UserWarning, match="no masks"):
        trainer = ConceptTrainer(tiny_pipe, plain, "<mydisc>", "cat", config)
    assert trainer.pair_bank is None and trainer.bank.mask_source == "attention"


def test_an_empty_mask_is_a_training_error(tiny_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    images[0] = TrainingImage(images[0].name, images[0].image, Image.new("L", images[0].image.size, 0))
    config = TrainingConfig(pair_probability=0.5, pair_words=("dog",), **QUICK)
    with pytest.raises(TrainingError, match="mask is empty"):
        ConceptTrainer(tiny_pipe, images, "<mydisc>", "cat", config)
