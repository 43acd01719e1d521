"""Does a base model place objects where the words say? Three quick measurements (a minute on 2 cores):

    python -m perfusion.world.basemodel.layout [--model DIR | --run-dir checkpoints/basemodel]

1. Sampled images: the object's x for "on the left" and for "on the right", per seed. If the words steer, the two
   differ; if the seed's noise steers, they agree seed by seed (correlation near 1).
2. The x0 the UNet predicts from pure noise (the last training timestep): how much it changes between "left" and
   "right" against how much it changes between two background colours.
3. A linear probe: how well a cell's x can be read from the UNet's middle-block features (is position information
   there at all?).
4. Attention from pure noise: the share of the object noun's and the position word's cross-attention map that falls
   on the box the world would draw for "left" and for "right", against the box's share of the image (what attention
   spread evenly would give), and how much of the box cells' attention those tokens hold (EOS and padding hold the
   rest). The UNet writes the object through the tokens that know it and where it goes only where they attend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from perfusion.pipeline.text import encode, tokenize
from perfusion.world.scenes import SceneSpec

from .grounding import AttentionRecorder, CaptionGrounding, attention_resolutions, box_attention, box_shares
from .model import pipeline_from_checkpoint

PROMPT = "a photo of a small {object} {position} on a {colour} background"


def object_centre(image) -> tuple[float, float]:
    """Centroid (x, y) of the pixels far from the border's median colour; NaN when there are none."""
    pixels = np.asarray(image).astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    ys, xs = np.nonzero(np.abs(pixels - np.median(border, axis=0)).sum(-1) > 60)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else (float("nan"), float("nan"))


def sampled_positions(pipe, obj: str, seeds: int, steps: int, guidance: float) -> dict[str, np.ndarray]:
    """x of the object in each seed's image, for "on the left" and "on the right"."""
    xs = {}
    for position in ("on the left", "on the right"):
        generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
        images = pipe(
            [PROMPT.format(object=obj, position=position, colour="white")] * seeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
        ).images
        xs[position] = np.array([object_centre(image)[0] for image in images])
    return xs


@torch.no_grad()
def predicted_x0(pipe, prompt: str, noise: torch.Tensor) -> torch.Tensor:
    """The x0 the UNet predicts at the last training timestep from `noise` (pure noise there under zero terminal SNR)."""
    timestep = pipe.scheduler.config.num_train_timesteps - 1
    encoding = encode(pipe.text_encoder, tokenize(pipe.tokenizer, [prompt])).expand(len(noise), -1, -1)
    output = pipe.unet(noise, torch.full((len(noise),), timestep), encoding).sample
    abar = pipe.scheduler.alphas_cumprod[timestep]
    if pipe.scheduler.config.prediction_type == "v_prediction":
        return abar.sqrt() * noise - (1 - abar).sqrt() * output  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    return (noise - (1 - abar).sqrt() * output) / abar.sqrt()  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)


@torch.no_grad()
def middle_block_x_probe(pipe, noise: torch.Tensor, prompt: str) -> float:
    """R^2 of a least-squares readout of each cell's x from the middle block's features (fit on half the noises,
    scored on the other half)."""
    captured = {}
    handle = pipe.unet.mid_block.register_forward_hook(lambda module, inputs, output: captured.update(features=output))
    try:
        predicted_x0(pipe, prompt, noise)
    finally:
        handle.remove()
    features = captured["features"]
    count, channels, height, width = features.shape
    rows = torch.cat([features.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(count * height * width, 1)], 1)
    target = torch.arange(width, dtype=torch.float32).repeat(count * height)[:, None]
    half = len(rows) // 2
    weights = torch.linalg.lstsq(rows[:half], target[:half]).solution
    residual = (rows[half:] @ weights - target[half:]).pow(2).mean()
    return float(1 - residual / target[half:].var())


@torch.no_grad()
def attention_on_box(pipe, obj: str, noise: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """For "on the left" and "on the right", at the noisiest step, means over grounded tokens, layers and noises of:
    the share of a token's attention map on the object's box, the box's share of the image (an even spread's
    share), and the token's own attention in the box's cells (how much of what is written there it writes)."""
    recorder, grounding = AttentionRecorder(pipe.unet), CaptionGrounding(pipe.tokenizer)
    resolutions = attention_resolutions(pipe.unet)
    side = resolutions[0]
    results = {}
    try:
        for position in ("left", "right"):
            spec = SceneSpec(object=obj, background="blue", position=position, size="small")
            prompt = PROMPT.format(object=obj, position=f"on the {position}", colour="blue")
            targets = grounding.targets([spec] * len(noise), [prompt] * len(noise), resolutions)
            with recorder.recording():
                predicted_x0(pipe, prompt, noise)
            shares = torch.cat(box_shares(recorder.maps, targets))
            held = torch.cat([(a * m).sum(1) / m.sum(1) for a, m in box_attention(recorder.maps, targets)])
            results[position] = (float(shares.mean()), float(targets.masks[side][0].mean()), float(held.mean()))
    finally:
        recorder.remove()
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a pipeline folder (default: the shipped model)")
    parser.add_argument("--run-dir", type=Path, default=None, help="the EMA weights of this run's unet.ckpt instead")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--object", default="teacup")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.run_dir is not None:
        pipe, info = pipeline_from_checkpoint(arguments.run_dir)
        print(f"checkpoint step {info['unet_step']}")
    else:
        from perfusion.world.model_path import default_model_path

        pipe = StableDiffusionPipeline.from_pretrained(arguments.model or default_model_path(), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    print(f"{config.prediction_type}, zero terminal SNR {config.get('rescale_betas_zero_snr', False)}")

    xs = sampled_positions(pipe, arguments.object, arguments.seeds, steps=25, guidance=4.0)
    left, right = xs["on the left"], xs["on the right"]
    print(f"object x, {arguments.seeds} seeds (image 64 px): left {np.round(left, 1)}, right {np.round(right, 1)}")
    print(
        f"  mean left {np.nanmean(left):.1f}, right {np.nanmean(right):.1f}; per-seed correlation "
        f"{np.corrcoef(left, right)[0, 1]:.3f}; spread between seeds {np.nanstd(left):.1f} px, "
        f"between the prompts {np.nanstd(left - right):.1f} px"
    )

    noise = torch.randn(
        16,
        pipe.unet.config.in_channels,
        pipe.unet.config.sample_size,
        pipe.unet.config.sample_size,
        generator=torch.Generator().manual_seed(0),
    )
    x0 = {
        key: predicted_x0(pipe, PROMPT.format(object=arguments.object, position=position, colour=colour), noise)
        for key, (position, colour) in {
            "left": ("on the left", "blue"),
            "right": ("on the right", "blue"),
            "red": ("on the left", "red"),
        }.items()
    }
    print(
        f"x0 predicted from the noisiest step: left vs right differ by {(x0['left'] - x0['right']).abs().mean():.4f}, "
        f"blue vs red background by {(x0['left'] - x0['red']).abs().mean():.4f} (mean absolute)"
    )
    prompt = PROMPT.format(object=arguments.object, position="", colour="blue").replace("  ", " ")
    print(
        f"linear probe of a cell's x from the middle block's features: R^2 {middle_block_x_probe(pipe, noise, prompt):.3f}"
    )
    shares = attention_on_box(pipe, arguments.object, noise)
    print(
        "the noun's and position word's attention from pure noise: share of their map on the object's box "
        + ", ".join(f"{position} {share:.3f}" for position, (share, _, _) in shares.items())
        + f" (even spread: {shares['left'][1]:.3f}); "
        "their share of each box cell's attention "
        + ", ".join(f"{position} {held:.3f}" for position, (_, _, held) in shares.items())
    )


if __name__ == "__main__":
    main()
