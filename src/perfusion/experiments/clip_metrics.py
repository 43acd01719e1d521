"""CLIP-I and CLIP-T (the paper's metrics) with a transformers CLIPModel read from a local folder; nothing is
downloaded.

    scorer = ClipScorer.load("path/to/clip-vit-large-patch14")
    scorer.clip_i(generated_images, concept_images)      # mean image-image cosine over all pairs
    scorer.clip_t(generated_images, "a photo of a cat on the beach")   # mean image-text cosine
"""

from __future__ import annotations

from pathlib import Path

import torch


class ClipScorer:
    def __init__(self, model, tokenizer, image_processor):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def load(cls, path: str | Path) -> ClipScorer:
        """A CLIPModel, its tokenizer and image processor saved in one folder (save_pretrained layout)."""
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no CLIP model folder (config.json missing)")
        return cls(
            CLIPModel.from_pretrained(path, local_files_only=True),
            CLIPTokenizer.from_pretrained(path, local_files_only=True),
            CLIPImageProcessor.from_pretrained(path, local_files_only=True),
        )

    @torch.no_grad()
    def image_embeddings(self, images) -> torch.Tensor:
        if not images:
            raise ValueError("no images")
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")[
            "pixel_values"
        ]
        features = self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype))
        return torch.nn.functional.normalize(_as_tensor(features).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        features = self.model.get_text_features(**tokens)
        return torch.nn.functional.normalize(_as_tensor(features).float(), dim=-1)

    def clip_i(self, images, reference_images) -> float:
        """Mean cosine between every generated image and every reference image."""
        return float((self.image_embeddings(images) @ self.image_embeddings(reference_images).T).mean())

    def clip_t(self, images, prompt: str) -> float:
        """Mean cosine between the images and the prompt (write the concept as its supercategory word)."""
        return float((self.image_embeddings(images) @ self.text_embeddings([prompt]).T).mean())


def _as_tensor(features) -> torch.Tensor:
    """get_*_features returns a tensor, or (newer transformers) an output object holding the pooled projection."""
    if isinstance(features, torch.Tensor):
        return features
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(features, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(features).__name__}")
