"""A real service for tests and benchmarks: uvicorn on a free loopback port, in a thread; users made with the CLI's
store; a requests session per user."""

import socket
import threading
import time

import requests
import uvicorn

from perfusion.service.app import create_app
from perfusion.service.config import ServiceConfig
from perfusion.service.store import Store
from perfusion.testing import write_concept_images


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningService:
    def __init__(self, config: ServiceConfig):
        self.config = config
        self.app = create_app(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=120)

    @property
    def service(self):
        return self.app.state.service

    def user(self, name: str) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {Store(self.config.database).add_user(name)}"
        session.base = self.url
        return session


def call(session, method: str, path: str, **kwargs):
    return session.request(method, session.base + path, timeout=120, **kwargs)


def photos(folder, count=3):
    write_concept_images(folder, count=count, size=16)
    return [("images", (path.name, path.read_bytes(), "image/png")) for path in sorted(folder.iterdir())]


def wait_for_job(session, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(session, "GET", f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']}")
