"""Runs that are interrupted or fail half-way: kill -9 and resume, a NaN loss, a full disk, a shared C cache."""

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from perfusion.cli import main
from perfusion.pipeline.conditioning import TextConditioning
from perfusion.testing import load_pipeline, small_corpus, write_concept_images
from perfusion.training.images import load_training_images
from perfusion.training.trainer import TrainingConfig, TrainingError, train_concept

CAPTIONS = small_corpus()


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS))
    return path


def train_command(model, images, out, captions, *extra):
    return [
        sys.executable,
        "-m",
        "perfusion.cli",
        "train",
        "--model",
        str(model),
        "--images",
        str(images),
        "--token",
        "<mydisc>",
        "--supercategory",
        "cat",
        "--out",
        str(out),
        "--steps",
        "12",
        "--batch-size",
        "2",
        "--gradient-accumulation",
        "1",
        "--checkpoint-every",
        "1",
        "--captions",
        str(captions),
        "--quiet",
        *extra,
    ]


def test_a_concept_file_is_the_same_bytes_whichever_process_writes_it(tiny_pipeline_dir, tmp_path):
    """safetensors writes metadata in a per-process hash order; the files here do not depend on it."""
    from perfusion.testing import handmade_concept

    concept = handmade_concept(load_pipeline(tiny_pipeline_dir))
    concept.save(tmp_path / "here.safetensors")
    code = "import sys\nfrom perfusion.concept.format import Concept\nConcept.load(sys.argv[1]).save(sys.argv[2])\n"
    for n in range(3):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "here.safetensors"), str(tmp_path / f"{n}.safetensors")],
            check=True,
        )
        assert (tmp_path / f"{n}.safetensors").read_bytes() == (tmp_path / "here.safetensors").read_bytes()


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_file(tiny_pipeline_dir, tmp_path, captions_file):
    images = write_concept_images(tmp_path / "disc")
    straight = tmp_path / "straight.safetensors"
    started = time.perf_counter()
    subprocess.run(train_command(tiny_pipeline_dir, images, straight, captions_file), check=True, capture_output=True)
    duration = time.perf_counter() - started

    out = tmp_path / "killed.safetensors"
    checkpoint = out.with_name(out.name + ".ckpt")
    moments, kills = random.Random(0), 0

    def resumable():  # a checkpoint, or OUT written by a run killed after removing it (--resume then says it is done)
        return ["--resume"] if checkpoint.exists() or out.exists() else []

    while kills < 5:  # five kills that land while training, each followed by a resume (or a fresh start)
        command = train_command(tiny_pipeline_dir, images, out, captions_file, *resumable())
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moments.uniform(0.3, 1.0) * duration)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        else:
            out.unlink(missing_ok=True)  # it finished before the kill: run again
    final = subprocess.run(
        train_command(tiny_pipeline_dir, images, out, captions_file, *resumable()), capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    assert out.read_bytes() == straight.read_bytes()
    assert not checkpoint.exists()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_pipe, tmp_path):
    images = load_training_images(write_concept_images(tmp_path / "disc"))
    config = TrainingConfig(steps=6, batch_size=2, gradient_accumulation=1, checkpoint_every=1)
    checkpoint = tmp_path / "disc.safetensors.ckpt"
    calls = []

    def poisoned(module, args, output):  # the UNet's prediction turns NaN from the fifth training step on
        if torch.is_grad_enabled():  # training steps, not the held-out loss
            calls.append(1)
        if len(calls) > 4:
            return type(output)(sample=output.sample * float("nan"))
        return None

    hook = tiny_pipe.unet.register_forward_hook(poisoned)
    try:
        with pytest.raises(TrainingError, match="not finite"):
            train_concept(
                tiny_pipe, images, "<mydisc>", "cat", config, checkpoint=checkpoint, captions=CAPTIONS, progress=False
            )
    finally:
        hook.remove()
    state = torch.load(checkpoint, weights_only=False)
    assert state["step"] >= 1 and all(torch.isfinite(v).all() for v in state["value_targets"].values())
    assert all(torch.isfinite(vector).all() for vector in state["token_embeddings"])


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs, or a skip where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def fill(disk):
    """Write zeros until the disk is full, to the last block."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_leaves_no_partial_file_and_the_old_file_untouched(tiny_pipe, small_disk, capsys):
    from perfusion.testing import handmade_concept

    concept = handmade_concept(tiny_pipe)
    existing = concept.save(small_disk / "mycat.safetensors")
    before = existing.read_bytes()
    fill(small_disk)
    with pytest.raises(OSError):
        concept.save(existing)
    assert existing.read_bytes() == before
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "mycat.safetensors"]  # no temporary left


def test_a_full_disk_is_one_clear_line_from_the_command_line(
    tiny_pipeline_dir, small_disk, tmp_path, captions_file, capsys
):
    from perfusion.testing import handmade_concept

    concept_file = handmade_concept(load_pipeline(tiny_pipeline_dir)).save(tmp_path / "mycat.safetensors")
    fill(small_disk)
    code = main(
        [
            "generate",
            "--model",
            str(tiny_pipeline_dir),
            "--concept",
            str(concept_file),
            "--prompt",
            "a photo of a <mycat>",
            "--steps",
            "1",
            "--out",
            str(small_disk / "out"),
            "--captions",
            str(captions_file),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("perfusion: error:") == 1, err


def test_two_processes_computing_c_at_once_share_one_consistent_cache(tiny_pipeline_dir, tmp_path, captions_file):
    code = (
        "import sys, torch\n"
        "from perfusion.testing import load_pipeline\n"
        "from perfusion.pipeline.covariance import inverse_covariance\n"
        "from perfusion.pipeline.conditioning import TextConditioning\n"
        "from perfusion.pipeline.corpus import load_captions\n"
        "pipe = load_pipeline(sys.argv[1])\n"
        "inverse = inverse_covariance(TextConditioning.of(pipe), load_captions(sys.argv[2]))\n"
        "torch.save(inverse, sys.argv[3])\n"
    )
    environment = {**os.environ, "PERFUSION_CACHE": str(tmp_path / "cache")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_pipeline_dir), str(captions_file), str(tmp_path / f"c{n}.pt")],
            env=environment,
        )
        for n in range(2)
    ]
    assert all(process.wait() == 0 for process in processes)
    first, second = (torch.load(tmp_path / f"c{n}.pt") for n in range(2))
    assert torch.equal(first, second)
    cached = list((tmp_path / "cache" / "covariance").glob("*.safetensors"))
    assert len(cached) == 1 and not list((tmp_path / "cache" / "covariance").glob("*.tmp"))


def test_a_corrupt_covariance_cache_is_recomputed_with_a_warning(tiny_pipe, tmp_path, monkeypatch):
    from perfusion.pipeline.covariance import inverse_covariance

    monkeypatch.setenv("PERFUSION_CACHE", str(tmp_path / "cache"))
    expected = inverse_covariance(TextConditioning.of(tiny_pipe), CAPTIONS)
    (cached,) = (tmp_path / "cache" / "covariance").glob("*.safetensors")
    for damage in (b"not a safetensors file", cached.read_bytes()[:100]):
        cached.write_bytes(damage)
        with pytest.warns(UserWarning, match="recomputed"):
            again = inverse_covariance(TextConditioning.of(tiny_pipe), CAPTIONS)
        assert torch.equal(again, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired cache loads quietly
        inverse_covariance(TextConditioning.of(tiny_pipe), CAPTIONS)
