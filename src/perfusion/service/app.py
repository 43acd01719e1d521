"""`perfusion serve`: the HTTP API and web page over one running pipeline (FastAPI; OpenAPI docs at /docs).

Every route but the page needs a key (``Authorization: Bearer KEY``); a user sees and uses only their own concepts,
jobs and images (anyone else's id is a 404). A refused request is a 4xx with a one-line JSON reason
(``{"detail": "..."}``); an unexpected failure is a 500 with one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import shutil
import sqlite3
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path as FilePath

from fastapi import Depends, FastAPI, File, Form, HTTPException, Path, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from perfusion.concept.format import BETA_RANGE, TAU_RANGE, ConceptFileError
from perfusion.files import atomic_write
from perfusion.pipeline.generation import GenerationError
from perfusion.pipeline.text import CONCEPT_TOKEN_PATTERN
from perfusion.pipeline.tokens import TokenError, check_new_token
from perfusion.service.batching import QueueFull, UserQueueFull
from perfusion.service.config import ServiceConfig
from perfusion.service.core import Service
from perfusion.service.prompt_tokens import PromptError
from perfusion.service.store import MAX_ID, User
from perfusion.service.uploads import UploadError, check_concept_file, check_images, write_images

log = logging.getLogger("perfusion.service")
GENERATION_TIMEOUT_S = 600


class BodyLimit:
    """Before a request's body is read: an API call that sends one needs a valid key (401), and a body over ``limit``
    bytes is refused (413), at once by its Content-Length, or when a body sent without one passes it (the app then
    sees the client gone, and what it would answer is dropped)."""

    def __init__(self, app, limit: int, authorised):
        self.app, self.limit, self.authorised = app, limit, authorised

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["method"] in ("POST", "PUT", "PATCH") and scope["path"].startswith("/api/"):
            if not self.authorised(api_key(headers.get(b"authorization", b"").decode("latin-1"), headers)):
                return await refusal(401, "a valid API key is needed (Authorization: Bearer KEY)")(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await refusal(413, f"request body over {self.limit:,} bytes")(scope, receive, send)
        seen, answered = 0, False

        async def guarded_send(message):
            if not answered:
                await send(message)

        async def limited():
            nonlocal seen, answered
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not answered:
                await refusal(413, f"request body over {self.limit:,} bytes")(scope, receive, send)
                answered = True
                return {"type": "http.disconnect"}
            return message

        return await self.app(scope, limited, guarded_send)


def refusal(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def api_key(authorization: str, headers: dict) -> str:
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip()


class ConceptGate(BaseModel):
    beta: float | None = Field(None, description=f"in [{BETA_RANGE[0]}, {BETA_RANGE[1]}]: low follows the concept")
    tau: float | None = Field(None, description=f"in ({TAU_RANGE[0]}, {TAU_RANGE[1]}]")


class GenerateBody(BaseModel):
    prompt: str = Field(description='with your concepts\' tokens, e.g. "<mycat> on a red sofa"')
    negative_prompt: str = ""
    concepts: dict[str, ConceptGate] = Field(default_factory=dict, description="token -> its beta and tau")
    seed: int = Field(0, ge=0, lt=2**63)
    steps: int | None = Field(None, description="denoising steps (the model's recipe by default)")
    guidance: float | None = Field(None, description="classifier-free guidance scale (the model's by default)")
    images: int = Field(1, ge=1)


def concept_view(row: dict) -> dict:
    return {key: row[key] for key in ("id", "token", "supercategory", "source", "created")}


def job_view(row: dict) -> dict:
    view = {
        key: row[key] for key in ("id", "token", "supercategory", "images", "steps", "state", "step", "loss", "error")
    }
    view["progress"] = row["step"] / row["steps"] if row["steps"] else 0.0
    view["concept_id"] = row["concept_id"]
    return view


def create_app(config: ServiceConfig, service: Service | None = None) -> FastAPI:
    service = service or Service(config)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="perfusion",
        summary="Personalised Stable Diffusion with Perfusion concepts: train, share, generate in mixed batches",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        return JSONResponse({"detail": f"{where}: {first['msg']}" if where else first["msg"]}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def gone(request, error):
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(sqlite3.IntegrityError)
    async def conflict(request, error):
        return JSONResponse({"detail": "that conflicts with a concept or job made at the same time"}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        reference = uuid.uuid4().hex[:8]
        log.exception("unexpected error %s on %s", reference, request.url.path)
        return JSONResponse({"detail": f"internal error (reference {reference} in the server's log)"}, status_code=500)

    app.add_middleware(
        BodyLimit,
        limit=config.max_request_bytes,
        authorised=lambda key: bool(key) and service.store.user_for_key(key) is not None,
    )

    def user(request: Request) -> User:
        key = api_key(
            request.headers.get("authorization", ""), {b"x-api-key": request.headers.get("x-api-key", "").encode()}
        )
        found = service.store.user_for_key(key) if key else None
        if found is None:
            raise HTTPException(401, "a valid API key is needed (Authorization: Bearer KEY)")
        return found

    # -- the page ----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return files("perfusion.service").joinpath("page.html").read_text()

    @app.get("/api/me")
    def me(who: User = Depends(user)):
        return {"name": who.name, "model": FilePath(str(config.model)).name, "defaults": service.defaults()}

    # -- concepts ----------------------------------------------------------------------------------
    @app.get("/api/concepts")
    def list_concepts(who: User = Depends(user)):
        return [concept_view(row) for row in service.store.concepts(who.id)]

    def owned(who: User, concept_id: int) -> dict:
        row = service.store.concept(who.id, concept_id)
        if row is None:
            raise HTTPException(404, f"no concept {concept_id}")
        return row

    @app.delete("/api/concepts/{concept_id}", status_code=204)
    def delete_concept(concept_id: int = Path(ge=1, le=MAX_ID), who: User = Depends(user)):
        if not service.delete_concept(who.id, concept_id):
            raise HTTPException(404, f"no concept {concept_id}")
        return Response(status_code=204)

    @app.get("/api/concepts/{concept_id}/file")
    def download_concept(concept_id: int = Path(ge=1, le=MAX_ID), who: User = Depends(user)):
        row = owned(who, concept_id)
        name = re.sub(r"[^A-Za-z0-9_-]", "", row["token"]) or "concept"
        if not service.concept_path(concept_id).is_file():
            raise HTTPException(404, f"no concept {concept_id}")
        return FileResponse(
            service.concept_path(concept_id), media_type="application/octet-stream", filename=f"{name}.safetensors"
        )

    def check_quota(who: User) -> None:
        if len(service.store.concepts(who.id)) + service.store.active_jobs(who.id) >= config.max_concepts_per_user:
            raise HTTPException(429, f"you have {config.max_concepts_per_user} concepts: delete one first")

    def check_token(who: User, token: str) -> None:
        try:
            check_new_token(service.tokenizer, token)
            check_new_token(service.tokenizer, token.lower())  # the tokenizer reads text in lower case
        except TokenError as error:
            raise HTTPException(400, str(error)) from None
        if service.store.token_taken(who.id, token):
            raise HTTPException(409, f"you already have a concept or a job with the token {token}")

    @app.post("/api/concepts", status_code=201)
    def upload_concept(file: UploadFile = File(description="a concept file (.safetensors)"), who=Depends(user)):
        check_quota(who)
        data = file.file.read(config.max_concept_bytes + 1)
        try:
            concept = check_concept_file(file.filename, data, config)
            service.check_compatible(concept, file.filename)
        except (UploadError, ConceptFileError) as error:
            raise HTTPException(getattr(error, "status", 400), str(error)) from None
        if CONCEPT_TOKEN_PATTERN.search(concept.supercategory):
            raise HTTPException(400, "the concept's supercategory holds a <token>: not taken")
        with service.store.transaction():  # the checks and the insert with no other writer between
            check_quota(who)
            check_token(who, concept.token)
            concept_id = service.store.add_concept(who.id, concept.token, concept.supercategory, "uploaded")
            concept.save(service.concept_path(concept_id))
        return concept_view(service.store.concept(who.id, concept_id))

    def check_limits(who: User) -> None:
        check_quota(who)
        if service.store.active_jobs(who.id) >= config.max_jobs_per_user:
            raise HTTPException(429, f"you have {config.max_jobs_per_user} jobs queued or running: wait for one")
        if service.store.active_jobs() >= config.job_queue_limit:
            raise HTTPException(503, "the training queue is full: try again later")

    # -- training jobs -----------------------------------------------------------------------------
    @app.post("/api/jobs", status_code=202)
    def create_job(
        token: str = Form(description='the new word, e.g. "<mycat>"'),
        supercategory: str = Form(description='what it is, e.g. "cat"'),
        images: list[UploadFile] = File(description="1-16 photos of the thing (transparency is taken as its mask)"),
        steps: int | None = Form(None, description="optimizer steps (the model's recipe by default)"),
        who: User = Depends(user),
    ):
        check_token(who, token)
        supercategory = supercategory.strip()
        if not supercategory or len(supercategory) > 200 or CONCEPT_TOKEN_PATTERN.search(supercategory):
            raise HTTPException(400, "the supercategory must be a plain word or phrase of at most 200 characters")
        steps = service.training_steps() if steps is None else steps
        if not 1 <= steps <= config.max_training_steps:
            raise HTTPException(400, f"steps must lie in [1, {config.max_training_steps}]")
        check_limits(who)
        try:
            checked = check_images(
                [(item.filename, item.file.read(config.max_image_bytes + 1)) for item in images], config
            )
        except UploadError as error:
            raise HTTPException(error.status, str(error)) from None
        staging = service.config.folder("jobs") / f".upload-{uuid.uuid4().hex}"
        try:  # the images on disk first, then the job and its folder in one transaction: the worker sees both or none
            write_images(checked, staging / "images")
            with service.store.transaction():
                check_token(who, token)
                check_limits(who)
                job_id = service.store.add_job(who.id, token, supercategory, len(checked), steps)
                staging.rename(service.worker.job_folder(job_id))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        service.worker.wake.set()
        return job_view(service.store.job(job_id))

    @app.get("/api/jobs")
    def list_jobs(who: User = Depends(user)):
        return [job_view(row) for row in service.store.jobs(who.id)]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: int = Path(ge=1, le=MAX_ID), who: User = Depends(user)):
        row = service.store.job(job_id, who.id)
        if row is None:
            raise HTTPException(404, f"no job {job_id}")
        return job_view(row)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(job_id: int = Path(ge=1, le=MAX_ID), who: User = Depends(user)):
        state = service.store.cancel_job(job_id, who.id)
        if state is None:
            raise HTTPException(404, f"no job {job_id}")
        if state not in ("queued", "running"):
            raise HTTPException(409, f"job {job_id} is {state}: nothing to cancel")
        if state == "queued":  # the worker will never claim it: its folder goes now
            shutil.rmtree(service.worker.job_folder(job_id), ignore_errors=True)
        return job_view(service.store.job(job_id, who.id))

    # -- generation --------------------------------------------------------------------------------
    @app.post("/api/generate")
    async def generate_images(body: GenerateBody, who: User = Depends(user)):
        try:
            request = await asyncio.to_thread(service.generation_request, who, body)
        except (GenerationError, PromptError) as error:
            raise HTTPException(400, str(error)) from None
        try:
            future = service.batcher.submit(request)
        except UserQueueFull as error:
            raise HTTPException(429, str(error)) from None
        except QueueFull as error:
            raise HTTPException(503, str(error)) from None
        try:  # waiting holds no worker thread: many clients cannot starve the other routes
            images = await asyncio.wait_for(asyncio.wrap_future(future), GENERATION_TIMEOUT_S)
        except (GenerationError, PromptError) as error:
            raise HTTPException(400, str(error)) from None
        except asyncio.TimeoutError:
            raise HTTPException(503, "generation took too long: try again with fewer steps or images") from None
        return await asyncio.to_thread(save_images, who, body, images, request.batch_rows)

    def save_images(who: User, body: GenerateBody, images: list, batch_rows: int) -> dict:
        out = []
        for image in images:
            image_id = uuid.uuid4().hex
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write(
                service.image_path(who.id, image_id), lambda path, data=buffer.getvalue(): path.write_bytes(data)
            )
            service.store.add_image(image_id, who.id, body.prompt, body.model_dump(exclude={"prompt"}))
            out.append({"id": image_id, "png": base64.b64encode(buffer.getvalue()).decode()})
        return {"images": out, "batch_rows": batch_rows}

    @app.get("/api/images")
    def gallery(who: User = Depends(user)):
        return [
            {"id": row["id"], "prompt": row["prompt"], "settings": row["settings"], "created": row["created"]}
            for row in service.store.images(who.id)
        ]

    @app.get("/api/images/{image_id}", response_class=FileResponse)
    def image(image_id: str, who: User = Depends(user)):
        found = re.fullmatch(r"[0-9a-f]{32}", image_id) and service.store.image(image_id, who.id)
        if not found or not service.image_path(who.id, image_id).is_file():
            raise HTTPException(404, f"no image {image_id[:40]}")
        return FileResponse(service.image_path(who.id, image_id), media_type="image/png")

    return app
