"""Perfusion (key-locked rank-one editing) for diffusers Stable Diffusion pipelines.

    import perfusion
    perfusion.load_concepts(pipe, "mycat.safetensors")
    image = pipe("<mycat> sleeping on a red sofa").images[0]

Names are imported on first use, so `import perfusion.world` stays light.
"""

from importlib import import_module

from perfusion.version import __version__

_EXPORTS = {
    "Concept": "perfusion.concept.format",
    "ConceptFileError": "perfusion.concept.format",
    "load_concepts": "perfusion.pipeline.loader",
    "unload_concepts": "perfusion.pipeline.loader",
    "set_concept_settings": "perfusion.pipeline.settings",
    "concept_settings": "perfusion.pipeline.settings",
    "set_concept_options": "perfusion.pipeline.settings",
    "set_global_lock": "perfusion.pipeline.settings",
    "set_composition": "perfusion.pipeline.settings",
    "loaded_tokens": "perfusion.pipeline.loader",
    "generate": "perfusion.pipeline.generation",
    "GenerationConfig": "perfusion.pipeline.generation",
    "train_concept": "perfusion.training.trainer",
    "TrainingConfig": "perfusion.training.trainer",
    "TrainingResult": "perfusion.training.trainer",
    "load_training_images": "perfusion.training.images",
    "open_pipeline": "perfusion.pipeline.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perfusion' has no attribute {name!r}")
