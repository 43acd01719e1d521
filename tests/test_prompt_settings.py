"""Per-prompt gates: one pipeline call over prompts that use different concepts at different beta and tau (a server's
mixed batch) gives each prompt the images it gets alone. Images are compared as float arrays; a batched UNet call may
differ from single ones in the last bits, so the tolerance is 1e-5 (pixel values in [0, 1])."""

import numpy as np
import pytest

from perfusion.pipeline.generation import GenerationConfig, GenerationError, generate
from perfusion.pipeline.loader import find_runtime, load_concepts
from perfusion.pipeline.settings import concept_settings, set_concept_settings
from perfusion.testing import handmade_concept, small_corpus

CAPTIONS = small_corpus()
TOLERANCE = 1e-5


@pytest.fixture
def two_concepts(tiny_pipe):
    load_concepts(
        tiny_pipe,
        [handmade_concept(tiny_pipe, "<mycat>", "cat", seed=1), handmade_concept(tiny_pipe, "<mymug>", "mug", seed=2)],
        captions=CAPTIONS,
    )
    return tiny_pipe


def run(pipe, prompts, settings, seeds, images=1):
    config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, num_images_per_prompt=images, seed=seeds)
    return np.stack(generate(pipe, prompts, config, settings, output_type="np"))


def alone(pipe, prompt, settings, seeds):
    return run(pipe, [prompt], [settings], seeds, images=len(seeds))


def test_a_mixed_batch_gives_each_prompt_its_images_alone(two_concepts):
    requests = [
        ("a <mycat> on a sofa", {"<mycat>": (0.2, 0.1)}, [11]),
        ("a <mymug> on a table", {"<mymug>": (0.6, 0.2)}, [12]),
        ("a <mycat> next to a <mymug>", {"<mycat>": (0.5, None), "<mymug>": (0.3, 0.05)}, [13]),
        ("a dog in the snow", {}, [14]),
    ]
    batch = run(two_concepts, [p for p, _, _ in requests], [s for _, s, _ in requests], [x for *_, (x,) in requests])
    for row, (prompt, settings, seeds) in enumerate(requests):
        np.testing.assert_allclose(batch[row], alone(two_concepts, prompt, settings, seeds)[0], atol=TOLERANCE)


def test_the_same_prompt_at_two_betas_in_one_call_gets_each_its_own(two_concepts):
    """Same text, so the same encodings: the router gives the UNet's rows out to the prompts in order, with each
    prompt's images side by side (two images each here)."""
    prompt = "a <mycat> on a sofa"
    low, high = {"<mycat>": (0.05, 0.1)}, {"<mycat>": (0.95, 0.1)}
    batch = run(two_concepts, [prompt, prompt], [low, high], [1, 2, 3, 4], images=2)
    np.testing.assert_allclose(batch[:2], alone(two_concepts, prompt, low, [1, 2]), atol=TOLERANCE)
    np.testing.assert_allclose(batch[2:], alone(two_concepts, prompt, high, [3, 4]), atol=TOLERANCE)
    assert np.abs(batch[0] - run(two_concepts, [prompt], [high], [1])[0]).max() > 1e-3  # beta did act


def test_per_prompt_settings_last_one_call(two_concepts):
    runtime = find_runtime(two_concepts)
    with concept_settings(two_concepts, beta=[0.1, {"<mycat>": 0.9}]):
        assert runtime.prompt_gates[1] == {"<mycat>": (0.9, None)}
    assert runtime.prompt_gates is None


def test_per_prompt_settings_for_another_number_of_prompts_are_refused_before_any_step(two_concepts):
    with pytest.raises(GenerationError, match="settings for 1 prompts, but 2"):
        run(two_concepts, ["a <mycat>", "a <mymug>"], [{}], 0)


def test_a_list_for_good_is_refused_with_the_way_to_give_it(two_concepts):
    with pytest.raises(GenerationError, match="concept_settings or generate"):
        set_concept_settings(two_concepts, beta=[0.1, 0.2])


def test_seeds_must_be_one_per_image(two_concepts):
    with pytest.raises(GenerationError, match="3 seeds for 4 images"):
        run(two_concepts, ["a <mycat>", "a <mymug>"], None, [1, 2, 3], images=2)


def test_sdxl_same_prompt_at_two_betas_each_its_own(sdxl_dir):
    """Both text encoders' rows are given out to the twins alike (and the pooled embedding follows its row)."""
    from perfusion.testing import load_pipeline

    pipe = load_pipeline(sdxl_dir)
    load_concepts(pipe, handmade_concept(pipe), captions=CAPTIONS)
    prompt = "a <mycat> on a sofa"
    low, high = {"<mycat>": (0.05, 0.1)}, {"<mycat>": (0.95, 0.1)}
    batch = run(pipe, [prompt, prompt], [low, high], [5, 6])
    np.testing.assert_allclose(batch[0], alone(pipe, prompt, low, [5])[0], atol=TOLERANCE)
    np.testing.assert_allclose(batch[1], alone(pipe, prompt, high, [6])[0], atol=TOLERANCE)


def test_sdxl_prompts_told_apart_only_by_prompt_2_each_get_their_own_gates(sdxl_dir):
    """The first text encoder's rows are twins, the second's are not: each row follows its own prompt."""
    from perfusion.testing import load_pipeline

    pipe = load_pipeline(sdxl_dir)
    load_concepts(pipe, handmade_concept(pipe), captions=CAPTIONS)
    prompt, seconds = "a <mycat> on a sofa", ["a <mycat> on a sofa, photo", "a <mycat> on a sofa, drawing"]
    low, high = {"<mycat>": (0.05, 0.1)}, {"<mycat>": (0.95, 0.1)}
    config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, seed=[5, 6])
    batch = np.stack(generate(pipe, [prompt, prompt], config, [low, high], prompt_2=seconds, output_type="np"))
    for row, (gates, second) in enumerate(((low, seconds[0]), (high, seconds[1]))):
        config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, seed=[5 + row])
        alone = np.stack(generate(pipe, [prompt], config, [gates], prompt_2=[second], output_type="np"))
        np.testing.assert_allclose(batch[row], alone[0], atol=TOLERANCE)
