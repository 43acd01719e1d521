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


def submit_job(session, folder, token: str, supercategory: str = "cat", steps: int = 4, count: int = 3):
    """POST /api/jobs with ``count`` photos written into ``folder``; the response."""
    data = {"token": token, "supercategory": supercategory, "steps": str(steps)}
    return call(session, "POST", "/api/jobs", data=data, files=photos(folder, count))


def headless_chromium(profile, size: str = "1200,900"):
    """Debian's Chromium through its ChromeDriver (selenium), headless, with a fresh profile and no background
    networking (this machine's network is closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=options)


def wait_for_job(session, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(session, "GET", f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']}")
