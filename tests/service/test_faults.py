"""Faults as they happen to a running service: a kill during training, a client that leaves mid-upload."""

import os
import signal
import socket
import subprocess
import sys
import time

import requests

from perfusion.service.store import Store
from perfusion.service.testing import call, free_port, submit_job, wait_for_job


def start_server(model, data, port, cache):
    environment = dict(os.environ, PERFUSION_CACHE=str(cache))
    command = [sys.executable, "-m", "perfusion.cli", "serve", "--model", str(model), "--data", str(data)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return process
        except requests.ConnectionError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode())
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def test_a_job_cut_off_by_a_killed_server_resumes_and_its_concept_works(tiny_pipeline_dir, tmp_path):
    data, port = tmp_path / "data", free_port()
    key = Store((data.mkdir() or data) / "perfusion.db").add_user("patient")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    session.base = f"http://127.0.0.1:{port}"
    server = start_server(tiny_pipeline_dir, data, port, tmp_path / "cache")
    try:
        job = submit_job(session, tmp_path / "photos", "<kept>", "ball", 14).json()
        checkpoint = data / "jobs" / str(job["id"]) / "checkpoint.pt"
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and time.monotonic() < deadline:  # the first checkpoint, at step 10
            time.sleep(0.1)
        assert checkpoint.exists()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert call_state(data, job["id"]) == "running"  # cut off as it ran
    server = start_server(tiny_pipeline_dir, data, port, tmp_path / "cache")
    try:
        finished = wait_for_job(session, job["id"])
        assert finished["state"] == "done" and finished["step"] == 14, finished
        out = call(session, "POST", "/api/generate", json={"prompt": "a <kept> on grass", "steps": 2})
        assert out.status_code == 200 and len(out.json()["images"]) == 1
        assert not (data / "jobs" / str(job["id"])).exists()  # images and checkpoint cleared once done
    finally:
        server.terminate()
        server.wait(timeout=60)


def read_response(connection) -> str:
    """One whole HTTP response: headers, then Content-Length bytes of body (they may come in several segments)."""
    connection.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(body) < length:
        more = connection.recv(4096)
        if not more:
            break
        body += more
    return (head + b"\r\n\r\n" + body).decode()


def call_state(data, job_id):
    return Store(data / "perfusion.db").job(job_id)["state"]


def test_a_client_leaving_mid_upload_leaves_no_job_and_no_file(running):
    user = running.user("leaver-upload")
    key = user.headers["Authorization"]
    boundary = "perfusionboundary"
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n<gone>\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="supercategory"\r\n\r\ncat\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n"
        + b"\0" * 5000
    )
    request = (
        f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 200000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", running.port)) as connection:
        connection.sendall(request + head)
        time.sleep(0.5)
    time.sleep(0.5)
    assert call(user, "GET", "/api/jobs").json() == []
    assert not list(running.config.folder("jobs").iterdir())
    assert call(user, "GET", "/api/me").status_code == 200  # the server goes on


def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_read(running):
    key = running.user("big").headers["Authorization"]
    request = (
        f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {100 << 20}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", running.port)) as connection:
        connection.sendall(request + b"--b\r\n")
        answer = read_response(connection)
    assert answer.startswith("HTTP/1.1 413") and "request body over" in answer


def test_a_body_sent_without_a_length_is_cut_off_at_the_limit(tiny_pipeline_dir, tmp_path):
    from perfusion.service.config import ServiceConfig
    from perfusion.service.testing import RunningService

    config = ServiceConfig(model=str(tiny_pipeline_dir), data=tmp_path / "data", max_request_bytes=4000)
    with RunningService(config) as small:
        key = small.user("chunky").headers["Authorization"]
        head = (
            f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        part = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        chunk = b"x" * 1000
        with socket.create_connection(("127.0.0.1", small.port)) as connection:
            connection.sendall(head + b"%x\r\n" % len(part) + part + b"\r\n")
            for _ in range(8):
                connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            answer = read_response(connection)
        assert answer.startswith("HTTP/1.1 413") and "request body over 4,000 bytes" in answer
        assert not list(config.folder("jobs").iterdir())
