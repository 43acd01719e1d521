"""The service's API as its users meet it: a real uvicorn server on loopback, a tiny pipeline, short trainings."""

import base64
import io

from PIL import Image

from perfusion.files import safetensors_bytes
from perfusion.service.testing import call, photos, submit_job, wait_for_job
from perfusion.testing import handmade_concept


def test_a_user_trains_a_concept_and_generates_with_it(running, tmp_path):
    alice = running.user("alice")
    answer = submit_job(alice, tmp_path / "photos", "<mydisc>", "ball", 4)
    assert answer.status_code == 202, answer.text
    job = wait_for_job(alice, answer.json()["id"])
    assert job["state"] == "done" and job["step"] == 4, job
    concepts = call(alice, "GET", "/api/concepts").json()
    assert [c["token"] for c in concepts] == ["<mydisc>"]
    out = call(
        alice,
        "POST",
        "/api/generate",
        json={"prompt": "a <mydisc> on grass", "steps": 2, "images": 2, "concepts": {"<mydisc>": {"beta": 0.5}}},
    )
    assert out.status_code == 200, out.text
    pictures = [Image.open(io.BytesIO(base64.b64decode(item["png"]))) for item in out.json()["images"]]
    assert len(pictures) == 2 and pictures[0].size == (16, 16)  # the tiny pipeline's native size
    gallery = call(alice, "GET", "/api/images").json()
    assert {item["id"] for item in gallery} >= {item["id"] for item in out.json()["images"]}
    assert call(alice, "GET", f"/api/images/{gallery[0]['id']}").headers["content-type"] == "image/png"


def test_another_users_concepts_jobs_and_images_are_404(running, tmp_path):
    owner, other = running.user("owner"), running.user("intruder")
    concept = handmade_concept(running.service.pipe, "<ownedcat>")
    concept.save(tmp_path / "c.safetensors")
    made = call(
        owner, "POST", "/api/concepts", files={"file": ("c.safetensors", (tmp_path / "c.safetensors").read_bytes())}
    )
    assert made.status_code == 201, made.text
    concept_id = made.json()["id"]
    for method, path in (("GET", f"/api/concepts/{concept_id}/file"), ("DELETE", f"/api/concepts/{concept_id}")):
        answer = call(other, method, path)
        assert answer.status_code == 404 and answer.json()["detail"] == f"no concept {concept_id}"
    refused = call(other, "POST", "/api/generate", json={"prompt": "a <ownedcat>", "steps": 1})
    assert refused.status_code == 400 and "unknown concept <ownedcat>" in refused.json()["detail"]
    tricked = call(other, "POST", "/api/generate", json={"prompt": f"a <pc{concept_id}>", "steps": 1})
    assert tricked.status_code == 400  # the service's own token is not a way in


def test_a_concept_file_downloads_and_uploads_again_as_the_same_concept(running):
    user = running.user("sharer")
    concept = handmade_concept(running.service.pipe, "<sharedmug>", "mug", seed=3)
    from perfusion.files import safetensors_bytes

    data = safetensors_bytes(concept.tensors(), concept.metadata())
    made = call(user, "POST", "/api/concepts", files={"file": ("mug.safetensors", data)}).json()
    downloaded = call(user, "GET", f"/api/concepts/{made['id']}/file")
    assert downloaded.status_code == 200
    friend = running.user("friend")
    again = call(friend, "POST", "/api/concepts", files={"file": ("x.safetensors", downloaded.content)})
    assert again.status_code == 201 and again.json()["token"] == "<sharedmug>"


def test_bad_requests_get_one_line_reasons(running, tmp_path):
    user = running.user("careless")
    cases = [
        (call(user, "POST", "/api/generate", json={"prompt": "x" * 501, "steps": 1}), 400, "at most 500"),
        (call(user, "POST", "/api/generate", json={"prompt": "a cat", "steps": 101}), 400, "steps must lie"),
        (call(user, "POST", "/api/generate", json={"prompt": "a cat", "images": 9}), 400, "images must lie"),
        (call(user, "POST", "/api/generate", json={"prompt": 3}), 422, "prompt"),
        (
            call(user, "POST", "/api/concepts", files={"file": ("c.safetensors", b"not a concept")}),
            400,
            "c.safetensors",
        ),
        (
            call(
                user, "POST", "/api/jobs", data={"token": "mycat", "supercategory": "cat"}, files=photos(tmp_path / "a")
            ),
            400,
            "must look like <name>",
        ),
        (
            call(
                user,
                "POST",
                "/api/jobs",
                data={"token": "<x1>", "supercategory": "cat"},
                files=[("images", ("a.png", b"\x89PNG broken", "image/png"))],
            ),
            400,
            "a.png",
        ),
        (
            call(
                user,
                "POST",
                "/api/jobs",
                data={"token": "<x2>", "supercategory": "cat"},
                files=photos(tmp_path / "b", count=17),
            ),
            400,
            "17 images given",
        ),
        (call(user, "GET", "/api/jobs/99999"), 404, "no job 99999"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert call(running.user("x"), "GET", "/api/me").status_code == 200
    import requests

    assert requests.get(running.url + "/api/concepts", timeout=10).status_code == 401


def test_a_decompression_bomb_is_refused_before_decoding(running, tmp_path):
    user = running.user("bomber")
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # 25 M pixels in a few KB
    answer = call(
        user,
        "POST",
        "/api/jobs",
        data={"token": "<bomb>", "supercategory": "cat"},
        files=[("images", ("bomb.png", buffer.getvalue(), "image/png"))],
    )
    assert answer.status_code == 413 and "bomb.png" in answer.json()["detail"]
    assert not list((running.config.data / "jobs").glob("*"))


def test_a_revoked_key_is_refused(running):
    from perfusion.service.store import Store

    user = running.user("leaver")
    assert call(user, "GET", "/api/me").status_code == 200
    Store(running.config.database).revoke_user("leaver")
    assert call(user, "GET", "/api/me").status_code == 401


def test_a_queued_job_can_be_cancelled_and_leaves_no_files(running, tmp_path):
    user = running.user("canceller")
    first = submit_job(user, tmp_path / "a", "<c1>", "cat", 40).json()
    second = submit_job(user, tmp_path / "b", "<c2>", "cat", 40).json()
    for job in (second, first):
        answer = call(user, "POST", f"/api/jobs/{job['id']}/cancel")
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    for job in (first, second):
        assert wait_for_job(user, job["id"])["state"] == "cancelled"
    import time

    deadline = time.monotonic() + 30
    while (running.config.data / "jobs" / str(first["id"])).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (running.config.data / "jobs" / str(first["id"])).exists()
    assert not (running.config.data / "jobs" / str(second["id"])).exists()
    assert call(user, "GET", "/api/concepts").json() == []


def test_a_deleted_concepts_id_is_never_given_again(running):
    user = running.user("recycler")
    concept = handmade_concept(running.service.pipe, "<first>")
    data = safetensors_bytes(concept.tensors(), concept.metadata())
    first = call(user, "POST", "/api/concepts", files={"file": ("a", data)}).json()["id"]
    assert call(user, "DELETE", f"/api/concepts/{first}").status_code == 204
    second = call(user, "POST", "/api/concepts", files={"file": ("a", data)}).json()["id"]
    assert second > first


def test_ids_past_sqlites_range_and_keyless_bodies_are_refused_plainly(running):
    import requests

    user = running.user("prober")
    for method, path in (
        ("GET", "/api/jobs/99999999999999999999999"),
        ("POST", "/api/jobs/99999999999999999999999/cancel"),
    ):
        answer = call(user, method, path)
        assert answer.status_code == 422 and "less than or equal" in answer.json()["detail"]
    keyless = requests.post(running.url + "/api/generate", data=b"{not json", timeout=10)
    assert keyless.status_code == 401  # refused before the body is read


def test_an_unexpected_failure_is_a_500_without_internals(running, monkeypatch):
    user = running.user("unlucky")

    def broken(*args, **kwargs):
        raise RuntimeError("/secret/path/on/the/server")

    monkeypatch.setattr(running.service.store, "images", broken)
    answer = call(user, "GET", "/api/images")
    assert answer.status_code == 500 and "/secret" not in answer.text and "reference" in answer.json()["detail"]
