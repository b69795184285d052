"""k-NN wall time per backend (lit_susc.cluster.knn), Gaussian data, d = 32, k = 45.

    python benchmarks/bench_knn.py [--sizes 10000 100000] [--max-seconds 400] [--device cpu]

A backend whose predicted time (quadratic in N from its previous size) exceeds --max-seconds
is skipped at the next size. The first keops call (JIT compile) is timed separately.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lit_susc.cluster.knn import knn, resolve_backend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--max-seconds", type=float, default=400.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--backends", nargs="+", default=["sklearn", "torch", "keops"])
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, "
          f"auto -> {resolve_backend('auto', args.device)}")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if "keops" in args.backends:
        knn(rng.standard_normal((200, args.d)).astype(np.float32), args.k, "keops", device=args.device)
        print(f"keops first call (compile/load) {time.perf_counter() - t0:.1f} s")
    last: dict[str, tuple[int, float]] = {}
    ref = None
    for n in args.sizes:
        X = rng.standard_normal((n, args.d)).astype(np.float32)
        for b in args.backends:
            if b in last and last[b][1] * (n / last[b][0]) ** 2 > args.max_seconds:
                print(f"N={n:>8} {b:>8}: skipped (predicted {last[b][1] * (n / last[b][0]) ** 2:.0f} s)")
                continue
            t = time.perf_counter()
            idx, _ = knn(X, args.k, b, device=args.device)
            dt = time.perf_counter() - t
            last[b] = (n, dt)
            agree = "" if ref is None or ref[0] != n else f", rows with the same neighbour set as {ref[1]}: {np.mean((np.sort(idx, 1) == np.sort(ref[2], 1)).all(1)):.4f}"
            if ref is None or ref[0] != n:
                ref = (n, b, idx)
            print(f"N={n:>8} {b:>8}: {dt:8.2f} s{agree}", flush=True)


if __name__ == "__main__":
    main()
