"""A pipeline's Perfusion settings: each concept's gate (beta, tau), key locking and composition.

``set_concept_settings`` changes them for good (in the manner of diffusers' ``set_adapters``); ``concept_settings`` is
a context manager whose settings last one block and are put back after it, even when the block raises. Within a
block, beta and tau may also be given per prompt, as a list with one float or dict for each prompt of the pipeline
call: a batch of prompts then runs in one call, each prompt at its own gates (a server's mixed batch).
"""

from __future__ import annotations

from contextlib import contextmanager

from perfusion.composition.regions import MODES, RegionalCall, RegionsConfig
from perfusion.concept.format import BETA_RANGE, TAU_RANGE
from perfusion.pipeline.loader import find_runtime
from perfusion.pipeline.runtime import PerfusionRuntime


class GenerationError(ValueError):
    """A prompt or setting that cannot be generated."""


def check_gate(beta: float | None, tau: float | None) -> None:
    if beta is not None and not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
        raise GenerationError(f"beta must be in [{BETA_RANGE[0]}, {BETA_RANGE[1]}], got {beta}")
    if tau is not None and not TAU_RANGE[0] < tau <= TAU_RANGE[1]:
        raise GenerationError(f"tau must be in ({TAU_RANGE[0]}, {TAU_RANGE[1]}], got {tau}")


def require_runtime(pipe) -> PerfusionRuntime:
    runtime = find_runtime(pipe)
    if runtime is None:
        raise RuntimeError("no perfusion concepts are loaded in this pipeline")
    return runtime


def check_loaded(named, loaded: list[str]) -> None:
    """Every token ``named`` (settings given per concept) is a loaded concept."""
    unknown = [token for token in named if token not in loaded]
    if unknown:
        raise GenerationError(f"settings for {unknown[0]}, which is not loaded (loaded: {', '.join(loaded) or 'none'})")


def per_token(value, tokens: list[str]) -> dict[str, float]:
    """A float for every loaded concept, or a dict token -> float (None entries left out)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        check_loaded(value, tokens)
        return {token: float(v) for token, v in value.items() if v is not None}
    return {token: float(value) for token in tokens}


def per_prompt(beta, tau, tokens: list[str]) -> list[dict[str, tuple[float | None, float | None]]] | None:
    """Per-prompt gates from ``beta`` and ``tau`` where either is a list (one float, dict or None per prompt): entry n
    maps token -> (beta, tau), None keeping the concept's own; None when neither is a list."""
    lists = [value for value in (beta, tau) if isinstance(value, (list, tuple))]
    if not lists:
        return None
    count = len(lists[0])
    if count == 0 or any(len(value) != count for value in lists):
        raise GenerationError("per-prompt beta and tau must be lists of one entry per prompt, of the same length")
    prompts = []
    for n in range(count):
        betas = per_token(beta[n] if isinstance(beta, (list, tuple)) else beta, tokens)
        taus = per_token(tau[n] if isinstance(tau, (list, tuple)) else tau, tokens)
        for token in set(betas) | set(taus):
            check_gate(betas.get(token), taus.get(token))
        prompts.append({token: (betas.get(token), taus.get(token)) for token in set(betas) | set(taus)})
    return prompts


def composition_call(pipe, mode: str, regions: dict | None) -> RegionalCall | None:
    if mode not in MODES:
        raise GenerationError(f"composition must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "joint":
        return None
    timesteps = getattr(getattr(pipe, "scheduler", None), "config", {}).get("num_train_timesteps", 1000)
    try:
        return RegionalCall(RegionsConfig(**{"num_train_timesteps": timesteps, **(regions or {})}))
    except (TypeError, ValueError) as error:
        raise GenerationError(str(error)) from None


def set_concept_settings(
    pipe,
    *,
    beta=None,
    tau=None,
    global_lock: bool | None = None,
    composition: str | None = None,
    regions: dict | None = None,
) -> None:
    """Set the gate of every loaded concept (a float) or of some (a dict token -> float), global key locking and the
    composition mode ("joint" or "regions", with RegionsConfig's fields as ``regions``). None keeps a setting.
    Per-prompt gates (lists) last one call: they are ``concept_settings``'s."""
    if isinstance(beta, (list, tuple)) or isinstance(tau, (list, tuple)):
        raise GenerationError("per-prompt beta or tau (a list) lasts one call: give it to concept_settings or generate")
    apply_settings(pipe, beta, tau, global_lock, composition, regions)


def apply_settings(pipe, beta, tau, global_lock, composition, regions) -> None:
    runtime = require_runtime(pipe)
    tokens = list(runtime.concepts)
    prompts = per_prompt(beta, tau, tokens)
    if prompts is not None:
        beta = tau = None
    betas, taus = per_token(beta, tokens), per_token(tau, tokens)
    for token in tokens:
        check_gate(betas.get(token), taus.get(token))
    if regions and composition != "regions":
        raise GenerationError('regions settings need composition="regions"')
    regional = runtime.regional if composition is None else composition_call(pipe, composition, regions)
    for token in tokens:
        if token in betas or token in taus:
            runtime.set_options(token, beta=betas.get(token), tau=taus.get(token))
    runtime.set_call_settings(global_lock, regional, prompts)


@contextmanager
def concept_settings(pipe, *, beta=None, tau=None, global_lock=None, composition=None, regions=None):
    """``set_concept_settings``'s settings for the block only: the pipeline's own come back after it. ``beta`` and
    ``tau`` may also be lists, one float or dict for each prompt of the block's pipeline call."""
    runtime = require_runtime(pipe)
    saved = runtime.settings()
    try:
        apply_settings(pipe, beta, tau, global_lock, composition, regions)
        yield pipe
    finally:
        runtime.restore(saved)


def set_concept_options(pipe, token: str, *, beta: float | None = None, tau: float | None = None) -> None:
    """One concept's gate: lower beta follows the concept more, higher beta the prompt more."""
    set_concept_settings(pipe, beta={token: beta}, tau={token: tau})


def set_global_lock(pipe, enabled: bool) -> None:
    """Global key locking: keys read the prompt with every concept token replaced by its supercategory."""
    set_concept_settings(pipe, global_lock=enabled)


def set_composition(pipe, mode: str, **options) -> None:
    """How prompts with several concepts are denoised: "joint" (the paper's edit, every concept in one pass) or
    "regions" (each concept in its own region; ``options`` are RegionsConfig's fields)."""
    set_concept_settings(pipe, composition=mode, regions=options or None)
