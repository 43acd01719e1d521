"""Peak memory of one job, measured in a fresh process (stdlib only).

A spawned worker runs the job and reports its own ``getrusage(RUSAGE_SELF).ru_maxrss`` (RUSAGE_CHILDREN would
give the largest of all children so far, not this job's); on a GPU also ``torch.cuda.max_memory_allocated``.
The worker's peak includes importing torch and loading the pipeline: measure a job that only loads (the
benchmark's baseline row) and subtract.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Measured:
    value: Any
    peak_rss_bytes: int  # the worker process's peak resident set
    peak_gpu_bytes: int | None  # torch's peak allocation on the GPU, when one was used


def measured_call(function, args, kwargs) -> Measured:
    import torch

    value = function(*args, **kwargs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return Measured(value, peak, gpu)


def run_isolated(function, *args, **kwargs) -> Measured:
    """``function(*args, **kwargs)`` in a fresh spawned process; ``function`` must be importable by name."""
    pool = multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1)
    try:
        return pool.apply(measured_call, (function, args, kwargs))
    finally:
        pool.close()
        pool.join()
