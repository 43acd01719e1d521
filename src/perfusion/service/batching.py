"""Generation requests gathered into one pipeline call: the point of serving Perfusion.

Requests that arrive within ``batch_window_s`` of the first and share steps, guidance and size are run as one call of
up to ``batch_rows`` images, whatever concepts they use: each row keeps its own concepts, beta, tau and seed
(perfusion.pipeline.settings' per-prompt gates; one CPU generator per image), so a row's images are those it would get alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from perfusion.pipeline.generation import GenerationConfig, generate
from perfusion.service.concept_cache import ConceptCache


class QueueFull(RuntimeError):
    """More generation requests are waiting than the service takes."""


class UserQueueFull(QueueFull):
    """More of one user's generation requests are waiting than one user may have."""


@dataclass
class GenerationRequest:
    prompt: str  # with the service's concept tokens (perfusion.service.prompt_tokens)
    negative_prompt: str
    gates: dict[int, tuple[float | None, float | None]]  # concept id -> (beta, tau), None: the concept's own
    seed: int
    steps: int
    guidance: float
    images: int
    height: int | None = None
    width: int | None = None
    user_id: int = 0  # whose: checked again, under the pipeline's lock, just before it runs
    future: Future = field(default_factory=Future)
    batch_rows: int = 0  # set when it ran: the image rows of the call it ran in

    def key(self) -> tuple:
        return (self.steps, self.guidance, self.height, self.width)


def run_batch(pipe, cache: ConceptCache, requests: list[GenerationRequest]) -> list[list]:
    """One pipeline call for ``requests`` (same key): each request's images, one PIL image per image asked for."""
    tokens = cache.ensure({concept_id for request in requests for concept_id in request.gates})
    prompts, negatives, settings, seeds = [], [], [], []
    for request in requests:
        gates = {tokens[concept_id]: gate for concept_id, gate in request.gates.items()}
        for image in range(request.images):
            prompts.append(request.prompt)
            negatives.append(request.negative_prompt)
            settings.append(gates)
            seeds.append(request.seed + image)
    first = requests[0]
    config = GenerationConfig(
        num_inference_steps=first.steps,
        guidance_scale=first.guidance,
        seed=seeds,
        height=first.height,
        width=first.width,
    )
    images = generate(pipe, prompts, config, settings, negative_prompt=negatives)
    out, start = [], 0
    for request in requests:
        out.append(images[start : start + request.images])
        request.batch_rows = len(prompts)
        start += request.images
    return out


class GenerationBatcher:
    """A thread that runs queued requests in batches; ``lock`` is held while the pipeline is in use."""

    def __init__(
        self, pipe, cache: ConceptCache, batch_rows: int, window_s: float, queue_limit: int, refuse=None, per_user=None
    ):
        self.pipe, self.cache = pipe, cache
        self.refuse = refuse  # request -> an exception when it may no longer run (a concept deleted since), else None
        self.per_user = per_user  # most requests one user may have waiting
        self.batch_rows, self.window_s, self.queue_limit = batch_rows, window_s, queue_limit
        self.lock = threading.Lock()
        self.pending: deque[GenerationRequest] = deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.batches = 0
        self.thread = threading.Thread(target=self.loop, name="perfusion-generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout=60)
        with self.changed:
            while self.pending:
                self.pending.popleft().future.set_exception(RuntimeError("the service is stopping"))

    def submit(self, request: GenerationRequest) -> Future:
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest]) -> list[Future]:
        """Queue requests together (all or none): the batcher sees them at once."""
        with self.changed:
            if self.stopping:
                raise QueueFull("the service is stopping")
            if len(self.pending) + len(requests) > self.queue_limit:
                raise QueueFull(f"{len(self.pending)} generation requests are waiting: try again shortly")
            users = {request.user_id for request in requests}
            if self.per_user is not None and any(
                sum(waiting.user_id == user for waiting in self.pending) + sum(r.user_id == user for r in requests)
                > self.per_user
                for user in users
            ):
                raise UserQueueFull(f"you have {self.per_user} generation requests waiting: wait for one")
            self.pending.extend(requests)
            self.changed.notify_all()
        return [request.future for request in requests]

    def take(self) -> list[GenerationRequest] | None:
        """The next batch: the oldest request, and after the window, every waiting one of its key that fits."""
        with self.changed:
            while not self.pending and not self.stopping:
                self.changed.wait()
            if self.stopping:
                return None
            first = self.pending[0]
            deadline = time.monotonic() + self.window_s
            while not self.stopping and self.rows_waiting(first.key()) < self.batch_rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            batch, rows = [], 0
            for request in list(self.pending):
                if request.key() != first.key() or (batch and rows + request.images > self.batch_rows):
                    continue
                batch.append(request)
                rows += request.images
                self.pending.remove(request)
            return batch

    def still_allowed(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        """The requests that may still run; the others get their reason (their concept was deleted meanwhile)."""
        allowed = []
        for request in requests:
            refusal = None if self.refuse is None else self.refuse(request)
            if refusal is None:
                allowed.append(request)
            else:
                request.future.set_exception(refusal)
        return allowed

    def rows_waiting(self, key: tuple) -> int:
        return sum(request.images for request in self.pending if request.key() == key)

    def loop(self) -> None:
        while True:
            batch = self.take()
            if batch is None:
                return
            live = [request for request in batch if request.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                with self.lock:
                    live = self.still_allowed(live)
                    results = run_batch(self.pipe, self.cache, live) if live else []
                self.batches += 1
            except Exception as error:  # every request of the batch gets the reason; the thread goes on
                for request in live:
                    request.future.set_exception(error)
                continue
            for request, images in zip(live, results):
                request.future.set_result(images)
