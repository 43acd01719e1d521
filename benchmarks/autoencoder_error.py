"""How much an autoencoder loses where identity is: mean absolute error (0-255) on the object against the whole image.

    python benchmarks/autoencoder_error.py checkpoints/families/vae checkpoints/families-vae2/vae [--renders 240]

Each autoencoder folder round-trips the same fresh medium and large renders of free instances (encode, decode at the
latent mean); the error is averaged inside each render's object mask, and over the whole image. The loss that trains
an autoencoder is mostly flat background, so the whole-image figure hides what the object loses (docs/basemodel.md).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch


@torch.no_grad()
def errors(path: str, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """(object MAE, whole-image MAE), in 0-255 units."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path).float().eval()
    decoded = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in images.split(60)])
    error = (decoded - images).abs().mean(1, keepdim=True) * 127.5
    on_object = (error * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
    return float(on_object.mean()), float(error.mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("autoencoders", nargs="+", help="autoencoder folders (a pipeline's vae/)")
    parser.add_argument("--renders", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    from perfusion.training.images import images_to_tensor
    from perfusion.world.families.judge_data import free_instance, one_object_spec
    from perfusion.world.families.scenes import render_with_mask

    rng = random.Random("bgprobe")  # the renders of docs/basemodel.md's figures
    pairs = [render_with_mask(one_object_spec(free_instance(rng), rng, small=0.0)) for _ in range(arguments.renders)]
    images = images_to_tensor([image for image, _ in pairs])
    masks = torch.from_numpy(np.stack([np.asarray(mask, dtype=np.float32) / 255.0 for _, mask in pairs]))[:, None]
    for path in arguments.autoencoders:
        on_object, whole = errors(path, images, masks)
        print(f"{path}: object {on_object:.2f}, whole image {whole:.2f} (mean absolute error, 0-255)")


if __name__ == "__main__":
    main()
