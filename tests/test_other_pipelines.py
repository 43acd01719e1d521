"""Concepts loaded once act in the other pipelines made from the same components (issue 34): img2img and
inpainting made with ``from_pipe``; rows without a concept stay as the stock pipeline draws them."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.testing import handmade_concept, small_corpus

CAPTIONS = small_corpus()


def draw(pipe, prompt, **kwargs):
    generator = torch.Generator().manual_seed(0)
    out = pipe(prompt, num_inference_steps=4, guidance_scale=5.0, generator=generator, output_type="np", **kwargs)
    return out.images


def tiny_controlnet(unet):
    """A tiny ControlNetModel from the tiny UNet's config (conditioning image of the pipeline's size)."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))


def other_pipeline(pipe, kind):
    """A pipeline of another kind made from ``pipe`` with from_pipe, and the call's extra arguments."""
    image = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    if kind == "img2img":
        return StableDiffusionImg2ImgPipeline.from_pipe(pipe), {"image": image, "strength": 0.8}
    if kind == "inpainting":
        mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
        extra = {"image": image, "mask_image": mask, "strength": 0.9}
        return StableDiffusionInpaintPipeline.from_pipe(pipe), extra
    from diffusers import StableDiffusionControlNetPipeline

    controlnet = tiny_controlnet(pipe.unet)
    return StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet), {"image": image}


@pytest.mark.parametrize("kind", ["img2img", "inpainting", "controlnet"])
def test_a_concept_acts_in_a_pipeline_made_from_the_loaded_one(tiny_pipe, kind):
    other, extra = other_pipeline(tiny_pipe, kind)
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


def test_a_concept_acts_on_top_of_a_lora_and_both_act(tiny_pipe):
    """A peft LoRA on the UNet's attention projections and a concept at once: the edit is a correction on top of
    the LoRA-wrapped to_k / to_v, so each changes the image the other gives."""
    from peft import LoraConfig

    torch.manual_seed(0)
    tiny_pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    lora_only = draw(tiny_pipe, "a photo of a cat")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS, check=False)
    both = draw(tiny_pipe, "a photo of a <mycat>")
    assert np.array_equal(draw(tiny_pipe, "a photo of a cat"), lora_only)  # no concept in the row: the LoRA alone
    tiny_pipe.unet.disable_adapters()
    concept_only = draw(tiny_pipe, "a photo of a <mycat>")
    assert not np.allclose(both, lora_only, atol=1e-3) and not np.allclose(both, concept_only, atol=1e-3)
