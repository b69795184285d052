"""What the benchmarks share to time things: a fixed thread count set before torch loads,
Lightning's per-fit chatter silenced, and wall-clock timing that synchronises CUDA around each call.

Nothing here imports torch at import time, so a benchmark can import this module, parse its
arguments and call ``pin_threads`` before torch (and the BLAS libraries it loads) reads its
thread settings.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings


def pin_threads(threads: int) -> None:
    """Run torch (and OpenMP/MKL) on ``threads`` threads; call it before anything imports torch:
    on a small shared machine one thread gives stable numbers."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners and the "modules in eval mode" notice (the sampler runs
    the model in eval mode on purpose), which would drown a benchmark's tables."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*eval mode.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def timed(fn, device, repeats: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds); ``device`` a torch.device."""
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
