"""Mixed-concept batches: requests that arrive together run in one pipeline call, each row at its own concepts, beta,
tau and seed, and get the images they get alone (PNG pixels within 1 of 255: a batched UNet call may differ from a
single one in the last float bits, which can flip a rounding)."""

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from perfusion.files import safetensors_bytes
from perfusion.service.config import ServiceConfig
from perfusion.service.testing import RunningService, call
from perfusion.testing import handmade_concept


@pytest.fixture(scope="module")
def batching(tmp_path_factory, tiny_pipeline_dir):
    config = ServiceConfig(
        model=str(tiny_pipeline_dir), data=tmp_path_factory.mktemp("batching"), batch_window_s=1.5, queue_limit=8
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "perfusion-cache"))
        with RunningService(config) as running:
            yield running


def pixels(answer) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(item["png"])))).astype(int) for item in answer["images"]]


def add_concepts(running, session, names, seed):
    for n, name in enumerate(names):
        concept = handmade_concept(running.service.pipe, name, "cat", seed=seed + n)
        data = safetensors_bytes(concept.tensors(), concept.metadata())
        assert call(session, "POST", "/api/concepts", files={"file": ("c.safetensors", data)}).status_code == 201


def test_concurrent_requests_of_different_users_and_concepts_run_as_one_call_with_their_own_images(batching):
    users = [batching.user(f"user{n}") for n in range(4)]
    for n, user in enumerate(users):
        add_concepts(batching, user, ["<mine>", "<other>"], seed=10 * n)  # the same token names, different users
    bodies = [
        {"prompt": "a <mine> on a sofa", "concepts": {"<mine>": {"beta": 0.2}}, "seed": 1, "steps": 2},
        {"prompt": "a <mine> on a sofa", "concepts": {"<mine>": {"beta": 0.9}}, "seed": 1, "steps": 2},
        {"prompt": "a <mine> next to <other>", "seed": 2, "steps": 2, "images": 2},
        {"prompt": "a plain cat", "seed": 3, "steps": 2},
    ]
    answers = [None] * 4

    def send(n):
        answers[n] = call(users[n], "POST", "/api/generate", json=bodies[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    assert {answer.json()["batch_rows"] for answer in answers} == {5}  # one call: 1 + 1 + 2 + 1 images
    for user, body, answer in zip(users, bodies, answers):
        alone = call(user, "POST", "/api/generate", json=body).json()
        assert alone["batch_rows"] == body.get("images", 1)
        for batched, single in zip(pixels(answer.json()), pixels(alone)):
            assert np.abs(batched - single).max() <= 1
    same_prompt = [pixels(answer.json())[0] for answer in answers[:2]]  # one user's concept at two betas
    assert np.abs(same_prompt[0] - same_prompt[1]).max() > 0


def test_a_full_queue_is_refused_and_the_rest_are_answered(batching):
    user = batching.user("flood")
    answers = []
    lock = threading.Lock()

    def send(seed):
        answer = call(user, "POST", "/api/generate", json={"prompt": "a cat", "seed": seed, "steps": 30, "images": 8})
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send, args=(seed,)) for seed in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(answer.status_code for answer in answers)
    assert len(answers) == 14 and set(codes) <= {200, 503} and 503 in codes and 200 in codes
    refused = next(answer for answer in answers if answer.status_code == 503)
    assert "waiting" in refused.json()["detail"]


def test_a_concept_deleted_while_its_request_waits_fails_that_request_only(batching):
    owner, other = batching.user("deleter"), batching.user("bystander")
    add_concepts(batching, owner, ["<doomed>"], seed=50)
    add_concepts(batching, other, ["<kept>"], seed=51)
    doomed = call(owner, "GET", "/api/concepts").json()[0]["id"]
    answers = {}

    def send(name, session, prompt):
        answers[name] = call(session, "POST", "/api/generate", json={"prompt": prompt, "steps": 2})

    threads = [
        threading.Thread(target=send, args=("owner", owner, "a <doomed>")),
        threading.Thread(target=send, args=("other", other, "a <kept>")),
    ]
    for thread in threads:
        thread.start()
    import time

    time.sleep(0.5)  # both wait in the 1.5 s window
    assert call(owner, "DELETE", f"/api/concepts/{doomed}").status_code == 204
    for thread in threads:
        thread.join()
    assert answers["other"].status_code == 200
    assert answers["owner"].status_code == 400 and "was deleted" in answers["owner"].json()["detail"]
