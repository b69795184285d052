"""How many CPU threads a stage's process should use on a small machine: the quickstart model's
SGLD-sized forward/backward (8 contexts x 128 tokens) timed at each thread count, on the machine as
it is and with a competing job that keeps every core busy (a second process doing the same work
at the machine's full thread count, as another stage or test suite would).

    python benchmarks/bench_threads.py            # prints steps/s per thread count, alone and shared

Each measurement is its own process (OMP_NUM_THREADS is read once, when torch loads). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import os, sys, time, json
import torch
from lit_susc.tinylm import TinyLMConfig, build_tiny_lm
torch.manual_seed(0)
cfg = TinyLMConfig()
model = build_tiny_lm(cfg, cfg.vocab_size, 0)
ids = torch.randint(0, cfg.vocab_size, (8, cfg.context_length))
seconds = float(sys.argv[1])
def step():
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
for _ in range(3):
    step()
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    step(); n += 1
print(json.dumps({"steps_per_s": n / (time.perf_counter() - start)}))
"""


def measure(threads: int, seconds: float) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(seconds)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    rows = {}
    for shared in (False, True):
        competitor = None
        if shared:  # keeps every core busy for the whole measurement
            env = {**os.environ, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)}
            competitor = subprocess.Popen([sys.executable, "-c", WORKER, str(len(counts) * (args.seconds + 15))],
                                          env=env, stdout=subprocess.DEVNULL)
            time.sleep(5)
        try:
            rows[shared] = {t: measure(t, args.seconds) for t in counts}
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print(f"{cores} cores; steps/s of the quickstart model's forward/backward (8 x 128 tokens)")
    print(f"{'threads':>8} {'alone':>8} {'shared':>8}")
    for t in counts:
        print(f"{t:>8} {rows[False][t]:>8.2f} {rows[True][t]:>8.2f}")
    best = {shared: max(r, key=r.get) for shared, r in rows.items()}
    print(f"fastest: {best[False]} thread(s) alone, {best[True]} shared; "
          f"1 thread shared is {rows[True][1] / rows[True][cores]:.2f}x {cores} threads shared, "
          f"and {rows[False][1] / rows[False][cores]:.2f}x alone")


if __name__ == "__main__":
    main()
