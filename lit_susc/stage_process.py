"""A stage's command run as a process of its own, by a command that runs several (pipeline, develop).

Each stage runs in its own process, so that a multi-device stage launches its DDP ranks cleanly
and a crash in one stage leaves the runner able to say which. The process is ended with its
runner: the signals that stop the runner (SIGTERM, SIGINT, SIGHUP) are passed on to the stage's
process group (its ranks too), and the stage gets SIGTERM when the runner dies without one
(SIGKILL; Linux's PR_SET_PDEATHSIG, set by ``end_with_the_runner`` in the stage's process).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"
PARENT_VARIABLE = "LIT_SUSC_PIPELINE_PID"
"""Set in a stage's environment: the pid of the process that started it."""


SMALL_MACHINE_CORES = 4
"""``threads: auto`` gives each stage one thread on a machine with at most this many cores."""


class StageFailedError(RuntimeError):
    """A stage's process exited with an error, or was stopped."""


def check_threads(where: str, threads) -> int | str | None:
    """``threads`` of a runner's YAML: a whole number >= 1, 'auto' or None; else ValueError naming ``where``."""
    if threads not in (None, "auto") and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{where}: threads must be a whole number >= 1, 'auto' or null, got {threads!r}")
    return threads


def stage_threads(threads: int | str | None) -> int | None:
    """The CPU threads a stage's process gets: ``threads`` when a number; None (the environment's)
    for None; for 'auto', the environment's OMP_NUM_THREADS when it sets one, else 1 on a machine of
    at most ``SMALL_MACHINE_CORES`` cores (and the environment's on a larger one). One thread,
    because such a machine is usually shared: a process whose threads outnumber the free cores
    slows every step many times over (OpenMP threads wait on each other), while one thread loses
    at most what the second core would have given (benchmarks/bench_threads.py measures both)."""
    if threads != "auto":
        return threads
    if "OMP_NUM_THREADS" in os.environ or (os.cpu_count() or 1) > SMALL_MACHINE_CORES:
        return None
    return 1


@contextmanager
def in_process_threads(threads: int | str | None) -> Iterator[None]:
    """torch's intra-op threads set to ``stage_threads(threads)`` while a stage runs in the runner's own
    process (the tiny LM's training), as they are in a stage process's environment."""
    import torch

    count, before = stage_threads(threads), torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stage_environment(threads: int | str | None) -> dict[str, str]:
    """The environment of a stage's process: this one's, with ``stage_threads(threads)`` CPU threads
    when that is a number (OMP_NUM_THREADS and MKL_NUM_THREADS, which torch's intra-op pool follows)."""
    # A stage's process runs its own wandb service: a shared one would still hold the stage's run
    # (same id) when the runner adds the stage's summary to it.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"PYTHONUNBUFFERED": "1"}
    count = stage_threads(threads)
    if count is not None:
        env |= {"OMP_NUM_THREADS": str(count), "MKL_NUM_THREADS": str(count)}
    return env


def run_stage_process(args: list[str], what: str, env: dict[str, str],
                      started: Callable[[int], None] | None = None) -> None:
    """Run ``run.py <args>`` as ``what`` (named in errors) in a process of its own, ended with this
    one (module docstring); ``started(pid)`` is called once it runs.

    Raises:
        StageFailedError: it exited with an error, or a signal stopped this process meanwhile.
    """
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args], env={**env, PARENT_VARIABLE: str(os.getpid())},
                            start_new_session=True)
    if started is not None:
        started(proc.pid)
    stopped: list[int] = []

    def forward(signum, _frame) -> None:
        stopped.append(signum)
        os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        raise StageFailedError(f"stopped by {signal.Signals(stopped[0]).name} during {what}; run the same "
                               "command again to resume it")
    if code != 0:
        raise StageFailedError(f"{what} failed (exit status {code}; its messages are above). Fix the cause and run "
                               "the same command again: what finished is skipped and this resumes")


def end_with_the_runner() -> None:
    """Called first in a stage's process that a runner started (``PARENT_VARIABLE`` is set):
    receive SIGTERM when the runner's process dies, and stop at once if it is gone already
    (Linux's PR_SET_PDEATHSIG; elsewhere a killed runner leaves its stage running)."""
    parent = os.environ.pop(PARENT_VARIABLE, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before the line above
        sys.exit(f"lit-susc: the process (pid {parent}) that started this stage is gone; run its command again")
