"""Baselines for the comparison with Perfusion: Textual Inversion, DreamBooth, LoRA, Custom Diffusion.

Every method module has the same shape: ``METHOD`` (its name), ``CONFIG`` (a dataclass of its settings with
SD1.5 defaults and ``for_small_model``), ``train(pipe, images, token, supercategory, config, progress,
on_snapshot) -> BaselineResult`` (``on_snapshot(step, tensors)`` at the config's ``snapshot_steps``), ``apply(pipe, path) -> Personalised`` and ``KNOB`` (what a user turns at generation:
"guidance", or "scale" through ``Personalised.set_strength``). ``save(result, path)`` writes any method's
artifact. The engine never imports this package. Names are imported on first use (as in ``perfusion``), so a
measuring worker that imports ``perfusion.baselines.measure`` stays light.

    from perfusion import baselines
    result = baselines.lora.train(pipe, images, "<mycat>", "cat", baselines.lora.CONFIG(rank=16))
    baselines.save(result, "mycat-lora.safetensors")
    handle = baselines.lora.apply(fresh_pipe, "mycat-lora.safetensors")
    handle.set_strength(0.7)
    image = fresh_pipe(handle.prompt("a photo of a <mycat> on a sofa")).images[0]
"""

from importlib import import_module

METHOD_MODULES = {  # name in results -> module
    "textual-inversion": "perfusion.baselines.textual_inversion",
    "dreambooth": "perfusion.baselines.dreambooth",
    "lora": "perfusion.baselines.lora",
    "custom-diffusion": "perfusion.baselines.custom_diffusion",
}
_EXPORTS = {
    "save": "perfusion.baselines.artifact",
    "at_step": "perfusion.baselines.artifact",
    "snapshot_result": "perfusion.baselines.artifact",
    "read": "perfusion.baselines.artifact",
    "Personalised": "perfusion.baselines.artifact",
    "BaselineConfig": "perfusion.baselines.training",
    "BaselineError": "perfusion.baselines.training",
    "BaselineResult": "perfusion.baselines.training",
}

__all__ = ["METHOD_MODULES", "method", *_EXPORTS, "textual_inversion", "dreambooth", "lora", "custom_diffusion"]


def method(name: str):
    """The module of a method by its name in results ("lora", "textual-inversion", ...)."""
    if name not in METHOD_MODULES:
        raise KeyError(f"unknown baseline {name!r} (known: {', '.join(METHOD_MODULES)})")
    return import_module(METHOD_MODULES[name])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if f"perfusion.baselines.{name}" in METHOD_MODULES.values():
        return import_module(f"perfusion.baselines.{name}")
    raise AttributeError(f"module 'perfusion.baselines' has no attribute {name!r}")
