"""Concepts loaded once act in the other pipelines made from the same components (issue 34): img2img and
inpainting made with ``from_pipe``; rows without a concept stay as the stock pipeline draws them."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from perfusion.loader import find_runtime, load_concepts, unload_concepts
from perfusion.testing import handmade_concept, small_corpus

CAPTIONS = small_corpus()


def draw(pipe, prompt, **kwargs):
    generator = torch.Generator().manual_seed(0)
    out = pipe(prompt, num_inference_steps=4, guidance_scale=5.0, generator=generator, output_type="np", **kwargs)
    return out.images


def inputs(kind):
    image = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    if kind == "img2img":
        return StableDiffusionImg2ImgPipeline, {"image": image, "strength": 0.8}
    mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
    return StableDiffusionInpaintPipeline, {"image": image, "mask_image": mask, "strength": 0.9}


@pytest.mark.parametrize("kind", ["img2img", "inpainting"])
def test_a_concept_acts_in_a_pipeline_made_from_the_loaded_one(tiny_pipe, kind):
    cls, extra = inputs(kind)
    other = cls.from_pipe(tiny_pipe)
    stock_concept_word = draw(other, "a photo of a cat", **extra)
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    runtime, edited_calls = find_runtime(tiny_pipe), []
    hook = tiny_pipe.unet.register_forward_pre_hook(  # after the router's own pre-hook has routed the call
        lambda *_: edited_calls.append(runtime.context is not None and len(runtime.context.groups) > 0)
    )
    with_concept = draw(other, "a photo of a <mycat>", **extra)
    hook.remove()
    assert edited_calls and all(edited_calls), edited_calls  # the edit acted at every UNet call, not v* alone
    plain = draw(other, "a photo of a cat", **extra)
    assert np.array_equal(plain, stock_concept_word)  # rows without the concept: the stock pipeline's
    unload_concepts(tiny_pipe)
    assert not np.allclose(with_concept, plain, atol=1e-3)  # the concept changes the image
