"""Wall-clock timing shared by the benchmarks (synchronising CUDA around each call)."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
