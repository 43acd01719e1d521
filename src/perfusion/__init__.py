"""Perfusion (key-locked rank-one editing) for diffusers Stable Diffusion pipelines.

    import perfusion
    perfusion.load_concepts(pipe, "mycat.safetensors")
    image = pipe("<mycat> sleeping on a red sofa").images[0]

Names are imported on first use, so `import perfusion.world` stays light.
"""

from importlib import import_module

from perfusion.version import __version__

_EXPORTS = {
    "Concept": "perfusion.concept",
    "ConceptFileError": "perfusion.concept",
    "load_concepts": "perfusion.loader",
    "unload_concepts": "perfusion.loader",
    "set_concept_settings": "perfusion.settings",
    "concept_settings": "perfusion.settings",
    "set_concept_options": "perfusion.settings",
    "set_global_lock": "perfusion.settings",
    "set_composition": "perfusion.settings",
    "loaded_tokens": "perfusion.loader",
    "generate": "perfusion.generation",
    "GenerationConfig": "perfusion.generation",
    "train_concept": "perfusion.train",
    "TrainingConfig": "perfusion.train",
    "TrainingResult": "perfusion.train",
    "load_training_images": "perfusion.images",
    "open_pipeline": "perfusion.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perfusion' has no attribute {name!r}")
