"""Concepts loaded once act in the other pipelines made from the same components (issue 34): img2img and
inpainting made with ``from_pipe``; rows without a concept stay as the stock pipeline draws them."""

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from perfusion.pipeline.loader import find_runtime, load_concepts, unload_concepts
from perfusion.testing import handmade_concept, load_pipeline, small_corpus

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
    xl = isinstance(pipe, StableDiffusionXLPipeline)
    if kind == "img2img":
        cls = StableDiffusionXLImg2ImgPipeline if xl else StableDiffusionImg2ImgPipeline
        return cls.from_pipe(pipe), {"image": image, "strength": 0.8}
    if kind == "inpainting":
        mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
        extra = {"image": image, "mask_image": mask, "strength": 0.9}
        cls = StableDiffusionXLInpaintPipeline if xl else StableDiffusionInpaintPipeline
        return cls.from_pipe(pipe), extra
    from diffusers import StableDiffusionControlNetPipeline

    controlnet = tiny_controlnet(pipe.unet)
    return StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet), {"image": image}


@pytest.mark.parametrize("kind", ["img2img", "inpainting", "controlnet", "sdxl-img2img", "sdxl-inpainting"])
def test_a_concept_acts_in_a_pipeline_made_from_the_loaded_one(tiny_pipe, sdxl_dir, kind):
    if kind.startswith("sdxl-"):
        tiny_pipe, kind = load_pipeline(sdxl_dir), kind.removeprefix("sdxl-")
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


def test_a_textual_inversion_embedding_beside_a_concept_and_either_unloaded_first(tiny_pipe):
    """diffusers' textual-inversion tokens and concept tokens share the tokenizer: both act in one prompt, and taking
    either out (which renumbers the tokens added after it) leaves the other as it was."""
    width = tiny_pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vector = torch.randn(width, generator=torch.Generator().manual_seed(1))
    tiny_pipe.load_textual_inversion({"<style>": vector}, token="<style>")
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    tiny_pipe.load_textual_inversion({"<late>": -vector}, token="<late>")  # added after the concept
    style_only, late_only = draw(tiny_pipe, "a <style> photo of a cat"), draw(tiny_pipe, "a <late> photo of a cat")
    concept_only = draw(tiny_pipe, "a photo of a <mycat>")
    both = draw(tiny_pipe, "a <style> photo of a <mycat>")
    assert not np.allclose(both, concept_only, atol=1e-3) and not np.allclose(both, style_only, atol=1e-3)
    unload_concepts(tiny_pipe)  # <late>'s id moves down by one
    assert np.array_equal(draw(tiny_pipe, "a <late> photo of a cat"), late_only)
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    tiny_pipe.unload_textual_inversion("<style>")  # the concept's id moves down by one
    assert np.array_equal(draw(tiny_pipe, "a photo of a <mycat>"), concept_only)


def test_a_compiled_unet_draws_as_eager_and_a_new_prompt_compiles_nothing_new(tiny_pipe):
    """torch.compile of the UNet after loading: the same images as eager (within 2/255 per pixel), and the router's
    and plans' Python bookkeeping is outside the graph (torch.compiler.disable), so another prompt with the concept
    reuses the compiled graphs. A counting backend stands in for inductor (the same tracing, no C++ build: the
    inductor run, ~2 min here, is in docs/usage.md)."""
    load_concepts(tiny_pipe, handmade_concept(tiny_pipe), captions=CAPTIONS)
    eager = [draw(tiny_pipe, prompt) for prompt in ("a photo of a <mycat>", "a <mycat> on a sofa")]
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    tiny_pipe.unet = torch.compile(tiny_pipe.unet, backend=counting_backend)
    first = draw(tiny_pipe, "a photo of a <mycat>")
    compiled = len(graphs)
    second = draw(tiny_pipe, "a <mycat> on a sofa")
    assert compiled > 0 and len(graphs) == compiled  # traced once; the new prompt is new data, not a new graph
    assert np.abs(first - eager[0]).max() <= 2 / 255 and np.abs(second - eager[1]).max() <= 2 / 255
    assert not np.allclose(first, draw(tiny_pipe, "a photo of a cat"), atol=1e-3)  # the edit is in the compiled run
