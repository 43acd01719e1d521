"""`perfusion serve` under load, on loopback, with the embedded model (CPU by default).

Prints and writes (benchmarks/results/serve_load.json):
1. N concurrent clients for a bounded time: every request answered or refused, none lost; throughput and p50/p95
   latency as clients see it.
2. A mixed-concept batch (8 rows, 8 different users' concepts) against the same batch with no concepts (target: at
   least 0.95x the throughput) and against the 8 requests one at a time: the two kinds interleaved over many rounds,
   the median ratio with its spread (this machine's noise is about +-20% a round), beside the edit's own share of a
   step (the router and edit processors, timed by benchmarks/overhead.py's method).
3. 1,000 concepts loaded into the running pipeline: the load time, the resident memory they add, and a batch's time
   with them loaded against with 8.
Run it alone: the machine's other work shows in every figure.
Usage: python benchmarks/serve_load.py [--clients 16] [--seconds 60] [--rounds 15] [--concepts 1000] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
import torch

from perfusion.files import safetensors_bytes
from perfusion.service.batching import GenerationRequest, run_batch
from perfusion.service.config import ServiceConfig
from perfusion.service.testing import RunningService, call
from perfusion.testing import handmade_concept
from perfusion.world.model_path import default_model_path

PROMPTS = ("a photo of {} on a sofa", "{} in the snow", "a drawing of {}", "{} next to a tree")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def add_users(running: RunningService, count: int) -> list:
    """``count`` users, each with one concept named <mine> (the same name: the service keeps them apart)."""
    sessions = []
    for n in range(count):
        session = running.user(f"load{n}")
        concept = handmade_concept(running.service.pipe, "<mine>", "cat", seed=n)
        answer = call(
            session,
            "POST",
            "/api/concepts",
            files={"file": ("c", safetensors_bytes(concept.tensors(), concept.metadata()))},
        )
        answer.raise_for_status()
        session.concept_id = answer.json()["id"]
        sessions.append(session)
    return sessions


def load_test(running, sessions, seconds: float, steps: int) -> dict:
    """Each client sends requests back to back until the time is up; every outcome is counted."""
    outcomes, latencies, lock = {"answered": 0, "refused": 0, "lost": 0}, [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(n, session):
        round_ = 0
        while time.monotonic() < stop_at:
            body = {
                "prompt": PROMPTS[round_ % 4].format("<mine>"),
                "seed": round_,
                "steps": steps,
                "concepts": {"<mine>": {"beta": 0.5 + 0.05 * (n % 5)}},
            }
            started = time.perf_counter()
            try:
                answer = call(session, "POST", "/api/generate", json=body)
                kind = (
                    "answered"
                    if answer.status_code == 200
                    else "refused"
                    if answer.status_code in (429, 503)
                    else "lost"
                )
            except requests.RequestException:
                kind = "lost"
            with lock:
                outcomes[kind] += 1
                if kind == "answered":
                    latencies.append(time.perf_counter() - started)
            round_ += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n, session)) for n, session in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": len(sessions),
        "seconds": round(wall, 1),
        **outcomes,
        "images_per_s": round(outcomes["answered"] / wall, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "batches": running.service.batcher.batches,
    }


def requests_for(sessions, steps: int, with_concepts: bool) -> list[GenerationRequest]:
    out = []
    for n, session in enumerate(sessions[:8]):
        token = f"<pc{session.concept_id}>" if with_concepts else "a cat"
        gates = {session.concept_id: (0.5 + 0.05 * n, None)} if with_concepts else {}
        out.append(GenerationRequest(PROMPTS[n % 4].format(token), "", gates, n, steps, 7.5, 1))
    return out


def batch_rounds(service, sessions, rounds: int, steps: int) -> dict:
    """Mixed batch against plain batch, and mixed batch against the 8 requests one at a time (each waited for before
    the next is sent), each pair timed back to back in alternating order; the ratios of each pair."""
    timings = {"mixed": [], "plain": [], "single": []}

    def timed(kind):
        """Through the service's own batcher thread, as requests are served."""
        if kind == "single":
            batches = [[request] for request in requests_for(sessions, steps, True)]
        else:
            batches = [requests_for(sessions, steps, kind == "mixed")]
        started = time.perf_counter()
        for batch in batches:
            for future in service.batcher.submit_many(batch):
                future.result()
        return time.perf_counter() - started

    window, service.batcher.window_s = service.batcher.window_s, 0.0  # a lone request runs at once
    for kind in ("mixed", "plain", "single"):  # warm-up: concepts loaded, plans built
        timed(kind)
    plain_ratios, single_ratios = [], []
    for round_ in range(rounds):
        for other, ratios in (("plain", plain_ratios), ("single", single_ratios)):
            pair = {}
            for kind in ("mixed", other) if round_ % 2 else (other, "mixed"):
                pair[kind] = timed(kind)
                timings[kind].append(pair[kind])
            ratios.append(pair[other] / pair["mixed"])
    service.batcher.window_s = window
    return {
        "rounds": rounds,
        "rows": 8,
        "steps": steps,
        "mixed_batch_s": round(statistics.median(timings["mixed"]), 3),
        "plain_batch_s": round(statistics.median(timings["plain"]), 3),
        "one_at_a_time_s": round(statistics.median(timings["single"]), 3),
        "mixed_vs_plain_throughput_median": round(statistics.median(plain_ratios), 3),
        "mixed_vs_plain_throughput_range": [round(min(plain_ratios), 3), round(max(plain_ratios), 3)],
        "mixed_vs_plain_throughput_quartiles": [round(q, 3) for q in statistics.quantiles(plain_ratios, n=4)],
        "mixed_vs_one_at_a_time_speedup_median": round(statistics.median(single_ratios), 2),
    }


def edit_share(service, sessions, steps: int) -> dict:
    """The edit's own share of a mixed batch's UNet step: one recorded call of that batch timed with the edit
    processors and with the stock ones (the router's pre-hook runs in both: it is timed in benchmarks/overhead.py)."""
    from perfusion.pipeline.processor import PerfusionAttnProcessor

    unet = service.pipe.unet
    processors = unet.attn_processors
    stock = {name: p.original if isinstance(p, PerfusionAttnProcessor) else p for name, p in processors.items()}
    calls = []
    hook = unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    try:
        with service.batcher.lock:
            run_batch(service.pipe, service.cache, requests_for(sessions, 1, True))
    finally:
        hook.remove()
    args, kwargs = calls[0]
    timings = {"edit": [], "stock": []}
    with torch.no_grad(), service.batcher.lock:
        for _ in range(7):
            for kind in ("edit", "stock"):
                unet.set_attn_processor(dict(processors if kind == "edit" else stock))  # it empties the dict
                started = time.perf_counter()
                unet(*args, **kwargs)
                timings[kind].append(time.perf_counter() - started)
        unet.set_attn_processor(dict(processors))
    edit, plain = statistics.median(timings["edit"]), statistics.median(timings["stock"])
    return {
        "unet_step_with_edit_s": round(edit, 4),
        "unet_step_stock_s": round(plain, 4),
        "edit_share_of_step": round((edit - plain) / plain, 3),
    }


def median_time(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def many_concepts(service, folder: Path, count: int, steps: int, sessions) -> dict:
    """``count`` concepts registered and loaded into the running pipeline; what it costs."""
    process = psutil.Process()
    start_id = 100000
    for n in range(count):
        concept = handmade_concept(service.pipe, "<x>", "cat", seed=1000 + n)
        concept.save(service.cache.path(start_id + n))

    def batch():
        for future in service.batcher.submit_many(requests_for(sessions, steps, True)):
            future.result()

    batch()  # warm: plans built
    before_rss = process.memory_info().rss
    with_few = median_time(batch)
    with service.batcher.lock:  # between batches, as the service loads
        started = time.perf_counter()
        service.cache.ensure(set(range(start_id, start_id + count)) | {s.concept_id for s in sessions[:8]})
        load_s = time.perf_counter() - started
    after_rss = process.memory_info().rss
    batch()  # warm again: loading dropped the plans
    with_many = median_time(batch)
    from perfusion.pipeline.loader import loaded_tokens

    return {
        "concepts_loaded": len(loaded_tokens(service.pipe)),
        "load_s": round(load_s, 2),
        "load_ms_per_concept": round(1000 * load_s / count, 2),
        "rss_added_mb": round((after_rss - before_rss) / 2**20, 1),
        "batch_s_with_8_loaded": round(with_few, 3),
        "batch_s_with_all_loaded": round(with_many, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--concepts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = ServiceConfig(
            model=args.model or str(default_model_path()),
            data=Path(folder),
            cache_concepts=4096,
            queue_limit=args.clients * 2,
        )
        with RunningService(config) as running:
            sessions = add_users(running, max(8, args.clients))
            results = {"device": "cpu", "threads": torch.get_num_threads(), "model": Path(config.model).name}
            results["load"] = load_test(running, sessions[: args.clients], args.seconds, args.steps)
            print("load:", results["load"], flush=True)
            results["batches"] = batch_rounds(running.service, sessions, args.rounds, args.steps)
            print("batches:", results["batches"], flush=True)
            results["edit"] = edit_share(running.service, sessions, args.steps)
            print("edit:", results["edit"], flush=True)
            results["many_concepts"] = many_concepts(running.service, Path(folder), args.concepts, args.steps, sessions)
            print("many concepts:", results["many_concepts"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
