"""The micro world: procedural emoji scenes with captions, held-out example concepts, a judge CNN, and metrics.

Submodules: `catalog` (objects, colours, positions, sizes), `captions` (wordings, vocabulary), `scenes` (SceneSpec,
sample_spec, render, caption, make_scene), `examples` (the shipped example concepts), `judge`, `metrics`. Importing
this package is cheap: it loads no torch.
"""

from .examples import example_concepts, examples_dir
from .model_path import default_model_path

__all__ = ["default_model_path", "example_concepts", "examples_dir"]
