"""Training jobs, one at a time, in a thread beside the server, on a pipeline of its own.

A job's images are in ``jobs/{id}/images``, its resumable checkpoint at ``jobs/{id}/checkpoint.pt`` (written every
``checkpoint_every`` steps by perfusion.training.trainer), its state in SQLite. A job found running when the service starts was
cut off by a stop: it resumes from its checkpoint. A finished concept is written atomically to
``concepts/{concept id}.safetensors`` in the same transaction that records it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from perfusion.concept.format import one_line
from perfusion.service.config import ServiceConfig
from perfusion.service.store import Store
from perfusion.training.images import load_training_images
from perfusion.training.trainer import TrainingConfig, train_concept

log = logging.getLogger("perfusion.service")


class JobCancelled(Exception):
    """The job's owner cancelled it while it trained."""


class TrainingWorker:
    def __init__(self, store: Store, config: ServiceConfig, open_pipeline, recipe_training: dict):
        self.store, self.config, self.open_pipeline = store, config, open_pipeline
        self.recipe_training = recipe_training  # the model's recipe's training fields (read once, by the service)
        self.pipe = None  # opened at the first job
        self.wake = threading.Event()
        self.stopping = False
        self.current: int | None = None
        self.thread = threading.Thread(target=self.loop, name="perfusion-training", daemon=True)

    def job_folder(self, job_id: int) -> Path:
        return self.config.folder("jobs") / str(job_id)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=120)

    def loop(self) -> None:
        self.sweep()
        while not self.stopping:
            try:
                job = self.store.next_job()
                if job is None:
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                self.current = job["id"]
                self.run(job)
            except Exception:  # the worker goes on: one job's trouble never stops training for everyone
                log.exception("training worker")
                self.wake.wait(1.0)
            finally:
                self.current = None

    def sweep(self) -> None:
        """Folders a stop left behind: uploads never queued, and jobs that ended (their files are not needed)."""
        for folder in self.config.folder("jobs").iterdir():
            if folder.name.startswith(".upload-"):
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.name.isdigit():
                job = self.store.job(int(folder.name))
                if job is None or job["state"] not in ("queued", "running"):
                    shutil.rmtree(folder, ignore_errors=True)

    def training_config(self, steps: int) -> TrainingConfig:
        return TrainingConfig(
            **{**self.recipe_training, "steps": steps, "checkpoint_every": self.config.checkpoint_every}
        )

    def run(self, job: dict) -> None:
        job_id = job["id"]
        folder = self.job_folder(job_id)
        checkpoint = folder / "checkpoint.pt"
        if not self.store.claim_job(job_id):  # cancelled since it was read
            return
        last_write = [0.0]

        def progress(step: int, steps: int, loss: float) -> None:
            now = time.monotonic()
            if step == steps or now - last_write[0] > 0.5:
                self.store.update_job(job_id, step=step, loss=float(loss))
                last_write[0] = now
            state = self.store.job(job_id)["state"]
            if state == "cancelled" or self.stopping:
                raise JobCancelled

        try:
            if self.pipe is None:
                self.pipe = self.open_pipeline()
            images = load_training_images(folder / "images")
            result = train_concept(
                self.pipe,
                images,
                job["token"],
                job["supercategory"],
                self.training_config(job["steps"]),
                checkpoint=checkpoint,
                resume=checkpoint.exists(),
                progress=False,
                callback=progress,
            )
            self.finish(job, result.concept)
        except JobCancelled:
            if self.stopping and self.store.job(job_id)["state"] == "running":
                return  # the service stops: the job resumes at the next start
            shutil.rmtree(folder, ignore_errors=True)
        except Exception as error:
            log.exception("training job %s failed", job_id)
            reason = one_line(error).replace(str(folder), f"job {job_id}")
            self.store.update_job(job_id, only_if="running", state="failed", error=reason)
            shutil.rmtree(folder, ignore_errors=True)

    def finish(self, job: dict, concept) -> None:
        store = self.store
        db = store.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            if store.job(job["id"])["state"] != "running":  # cancelled at the last step
                db.execute("ROLLBACK")
                shutil.rmtree(self.job_folder(job["id"]), ignore_errors=True)
                return
            concept_id = store.add_concept(job["user_id"], job["token"], job["supercategory"], "trained")
            concept.save(self.config.folder("concepts") / f"{concept_id}.safetensors")
            store.update_job(job["id"], state="done", step=job["steps"], concept_id=concept_id)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        shutil.rmtree(self.job_folder(job["id"]), ignore_errors=True)  # its images and checkpoint: done with
