"""How much an autoencoder loses where identity is: mean absolute error (0-255) on the object against the whole image.

    python benchmarks/autoencoder_error.py checkpoints/families/vae checkpoints/families-vae2/vae [--renders 240] \
        [--sheet out/autoencoders.png]

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
def round_trips(path: str, images: torch.Tensor) -> torch.Tensor:
    """The images encoded and decoded at the latent mean, in [-1, 1]."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path).float().eval()
    return torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in images.split(60)])


def errors(decoded: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """(object MAE, whole-image MAE), in 0-255 units."""
    error = (decoded - images).abs().mean(1, keepdim=True) * 127.5
    on_object = (error * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
    return float(on_object.mean()), float(error.mean())


def write_round_trip_sheet(path: str, images: torch.Tensor, decoded: dict[str, torch.Tensor], count: int = 16) -> None:
    """The first renders, then each autoencoder's round trips of them, one row each."""
    from diffusers.image_processor import VaeImageProcessor

    from perfusion.sheets import SheetRow, write_sheet

    processor = VaeImageProcessor()
    renders = processor.postprocess(images[:count], output_type="pil")
    rows = [SheetRow("renders", [(image, f"render {i}") for i, image in enumerate(renders)])]
    for name, trips in decoded.items():
        pictures = processor.postprocess(trips[:count], output_type="pil")
        rows.append(SheetRow(name, [(image, f"render {i}") for i, image in enumerate(pictures)]))
    write_sheet(path, rows, title="autoencoder round trips (encode, decode at the latent mean)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("autoencoders", nargs="+", help="autoencoder folders (a pipeline's vae/)")
    parser.add_argument("--renders", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sheet", default=None, help="write the first 16 renders and their round trips here (PNG)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    from perfusion.training.images import images_to_tensor
    from perfusion.world.families.judge_data import free_instance, one_object_spec
    from perfusion.world.families.scenes import render_with_mask

    rng = random.Random("bgprobe")  # the renders of docs/basemodel.md's figures
    pairs = [render_with_mask(one_object_spec(free_instance(rng), rng, small=0.0)) for _ in range(arguments.renders)]
    images = images_to_tensor([image for image, _ in pairs])
    masks = torch.from_numpy(np.stack([np.asarray(mask, dtype=np.float32) / 255.0 for _, mask in pairs]))[:, None]
    decoded = {}
    for path in arguments.autoencoders:
        decoded[path] = round_trips(path, images)
        on_object, whole = errors(decoded[path], images, masks)
        print(f"{path}: object {on_object:.2f}, whole image {whole:.2f} (mean absolute error, 0-255)")
    if arguments.sheet:
        write_round_trip_sheet(arguments.sheet, images, decoded)


if __name__ == "__main__":
    main()
