"""What the service holds while it runs: the store, the generation pipeline with its concept cache and batcher, and
the training worker with a pipeline of its own."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from perfusion.concept.format import BETA_RANGE, TAU_RANGE
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.pipeline.corpus import model_captions
from perfusion.pipeline.covariance import inverse_covariance
from perfusion.pipeline.fingerprint import pipeline_fingerprint
from perfusion.pipeline.generation import GenerationError
from perfusion.pipeline.loader import check_compatible
from perfusion.pipeline.models import open_pipeline
from perfusion.recipes import read_recipe
from perfusion.service.batching import GenerationBatcher, GenerationRequest
from perfusion.service.concept_cache import ConceptCache, internal_token
from perfusion.service.config import ServiceConfig
from perfusion.service.prompt_tokens import PromptError, concepts_in, rewrite
from perfusion.service.store import Store, User
from perfusion.service.uploads import quoted
from perfusion.service.worker import TrainingWorker
from perfusion.training.trainer import TrainingConfig

log = logging.getLogger("perfusion.service")


class Service:
    def __init__(self, config: ServiceConfig):
        self.config = config
        config.data.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.database)
        self.pipe = open_pipeline(config.model)
        self.pipe.set_progress_bar_config(disable=True)
        self.tokenizer = copy.deepcopy(self.pipe.tokenizer)  # the base vocabulary, before any concept is loaded
        self.fingerprint = pipeline_fingerprint(self.pipe)
        recipe = read_recipe(config.model) if Path(config.model).is_dir() else None
        self.recipe_generation = dict(recipe.generation) if recipe is not None else {}
        self.recipe_training = dict(recipe.training) if recipe is not None else {}
        self.cache = ConceptCache(
            self.pipe,
            config.folder("concepts"),
            config.cache_concepts,
            inverse_covariance(TextConditioning.of(self.pipe), model_captions(self.pipe)),
        )
        self.batcher = GenerationBatcher(
            self.pipe,
            self.cache,
            config.batch_rows,
            config.batch_window_s,
            config.queue_limit,
            refuse=self.gone,
            per_user=config.max_pending_per_user,
        )
        self.worker = TrainingWorker(self.store, config, self.open_training_pipeline, self.recipe_training)

    def open_training_pipeline(self):
        pipe = open_pipeline(self.config.model)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def start(self) -> None:
        self.batcher.start()
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self.batcher.stop()

    # -- files ----------------------------------------------------------------------------------------
    def concept_path(self, concept_id: int) -> Path:
        return self.cache.path(concept_id)

    def image_path(self, user_id: int, image_id: str) -> Path:
        return self.config.folder("images") / str(user_id) / f"{image_id}.png"

    # -- settings -------------------------------------------------------------------------------------
    def defaults(self) -> dict:
        return {
            "steps": int(self.recipe_generation.get("num_inference_steps", 25)),
            "guidance": float(self.recipe_generation.get("guidance_scale", 7.5)),
            "training_steps": self.training_steps(),
        }

    def training_steps(self) -> int:
        if self.config.training_steps is not None:
            return self.config.training_steps
        return min(int(self.recipe_training.get("steps", TrainingConfig.steps)), self.config.max_training_steps)

    def check_compatible(self, concept, name: str | None) -> None:
        check_compatible(concept, self.fingerprint, self.pipe, quoted(name))

    def delete_concept(self, user_id: int, concept_id: int) -> bool:
        """The row, the file and the loaded concept, together, between batches (a request waiting for it is then
        refused before it runs)."""
        with self.batcher.lock:
            if not self.store.delete_concept(user_id, concept_id):
                return False
            self.concept_path(concept_id).unlink(missing_ok=True)
            self.cache.unload([concept_id])
        return True

    def gone(self, request: GenerationRequest) -> Exception | None:
        """A request whose concept was deleted since it was queued (checked under the batcher's lock)."""
        for concept_id in request.gates:
            if self.store.concept(request.user_id, concept_id) is None:
                return PromptError(f"concept {concept_id} was deleted before this request ran")
        return None

    # -- generation -----------------------------------------------------------------------------------
    def generation_request(self, who: User, body) -> GenerationRequest:
        """A checked request in the pipeline's tokens; PromptError or GenerationError for what is refused."""
        config, defaults = self.config, self.defaults()
        if not body.prompt.strip():
            raise PromptError("the prompt is empty")
        for name, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt)):
            if len(text) > config.max_prompt_chars:
                raise PromptError(f"the {name} is {len(text)} characters long (at most {config.max_prompt_chars})")
        steps = defaults["steps"] if body.steps is None else body.steps
        guidance = defaults["guidance"] if body.guidance is None else body.guidance
        if not 1 <= steps <= config.max_steps:
            raise GenerationError(f"steps must lie in [1, {config.max_steps}], got {steps}")
        if not 0 <= guidance <= config.max_guidance:
            raise GenerationError(f"guidance must lie in [0, {config.max_guidance}], got {guidance}")
        if not 1 <= body.images <= config.max_images_per_request:
            raise GenerationError(f"images must lie in [1, {config.max_images_per_request}], got {body.images}")
        owned = {row["token"]: row["id"] for row in self.store.concepts(who.id)}
        used = concepts_in(body.prompt, owned)
        if concepts_in(body.negative_prompt, owned):
            raise PromptError("concepts in the negative prompt are not taken")
        gates = {concept_id: (None, None) for concept_id in used}
        for token, gate in body.concepts.items():
            if token not in owned or owned[token] not in used:
                raise PromptError(f"settings for {token}, which the prompt does not use")
            if gate.beta is not None and not BETA_RANGE[0] <= gate.beta <= BETA_RANGE[1]:
                raise GenerationError(f"{token}: beta must lie in [{BETA_RANGE[0]}, {BETA_RANGE[1]}]")
            if gate.tau is not None and not TAU_RANGE[0] < gate.tau <= TAU_RANGE[1]:
                raise GenerationError(f"{token}: tau must lie in ({TAU_RANGE[0]}, {TAU_RANGE[1]}]")
            gates[owned[token]] = (gate.beta, gate.tau)
        return GenerationRequest(
            prompt=rewrite(body.prompt, owned, internal_token),
            negative_prompt=body.negative_prompt,
            gates=gates,
            seed=body.seed,
            steps=steps,
            guidance=guidance,
            images=body.images,
            user_id=who.id,
        )
