"""k-NN wall time per backend (lit_susc.cluster.knn), k = 45, with the approximate backend's recall.

    python benchmarks/bench_knn.py [--sizes 10000 100000 1000000] [--d 64] [--max-seconds 400]
                                   [--data mixture|gaussian] [--backends sklearn faiss faiss_ivf] [--device cpu]

Data: "mixture" (default), 1000 Gaussian blobs of Zipf-distributed sizes (centres N(0, I), spread
0.5), whitened, standing in for whitened chi with its many small clusters; "gaussian", N(0, I),
the hardest case for an approximate search (no structure; recall falls with d).

Per size and backend: wall time, its ratio to sklearn's at that size (sklearn / backend, > 1 is
faster), and against the first exact backend at that size the share of rows with the same
neighbour set (exact backends) or recall@k over all rows (approximate: mean |found & true| / k),
beside the approximate backend's own sampled recall (KnnReport; min_recall 0, so it reports
instead of raising). A backend whose predicted time (from its previous size, as N^2 for exact and
N^1.5 for IVF: nlist ~ sqrt(N) cells of ~ sqrt(N) points) exceeds --max-seconds is skipped at the next size. The first keops
call (JIT compile) is timed separately.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lit_susc.cluster import whiten
from lit_susc.cluster.knn import APPROXIMATE_BACKENDS, knn, resolve_backend


def _data(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, d)).astype(np.float32)
    p = 1.0 / np.arange(1, 1001)
    label = rng.choice(1000, n, p=p / p.sum())
    X = rng.standard_normal((1000, d))[label] + 0.5 * rng.standard_normal((n, d))
    return whiten(X)[0].astype(np.float32)


def _common(a: np.ndarray, b: np.ndarray, block: int = 10_000) -> np.ndarray:
    """Per row, how many ids a[i] and b[i] share (rows hold distinct ids), in row blocks."""
    return np.concatenate([(a[i:i + block, :, None] == b[i:i + block, None, :]).sum((1, 2))
                           for i in range(0, len(a), block)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--max-seconds", type=float, default=400.0)
    ap.add_argument("--data", choices=["mixture", "gaussian"], default="mixture")
    ap.add_argument("--device", default=None)
    ap.add_argument("--backends", nargs="+", default=["sklearn", "faiss", "faiss_ivf"])
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, data {args.data}, "
          f"d {args.d}, k {args.k}; auto -> "
          + ", ".join(f"{resolve_backend('auto', args.device, (n, args.d))} at N={n}" for n in args.sizes))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if "keops" in args.backends:
        knn(rng.standard_normal((200, args.d)).astype(np.float32), args.k, "keops", device=args.device)
        print(f"keops first call (compile/load) {time.perf_counter() - t0:.1f} s")
    last: dict[str, tuple[int, float]] = {}
    for n in args.sizes:
        X = _data(args.data, n, args.d, rng)
        ref, times = None, {}
        for b in args.backends:
            power = 1.5 if b in APPROXIMATE_BACKENDS else 2.0
            if b in last and last[b][1] * (n / last[b][0]) ** power > args.max_seconds:
                print(f"N={n:>8} {b:>10}: skipped (predicted {last[b][1] * (n / last[b][0]) ** power:.0f} s)")
                continue
            t = time.perf_counter()
            idx, _, report = knn(X, args.k, b, device=args.device, min_recall=0.0, return_report=True, verbose=False)
            times[b] = dt = time.perf_counter() - t
            last[b] = (n, dt)
            line = f"N={n:>8} {b:>10}: {dt:8.2f} s"
            if b != "sklearn" and "sklearn" in times:
                line += f", sklearn/{b} {times['sklearn'] / dt:5.2f}x"
            if report.recall is not None:
                line += f", sampled recall@{args.k} {report.recall:.4f} on {len(report.sampled)} rows"
            if ref is not None:
                common = _common(idx, ref[1])
                if b in APPROXIMATE_BACKENDS:
                    line += f", recall@{args.k} vs {ref[0]} on all rows {common.mean() / args.k:.4f}"
                else:
                    line += f", rows with the same neighbour set as {ref[0]}: {np.mean(common == args.k):.4f}"
            elif b not in APPROXIMATE_BACKENDS:
                ref = (b, idx)
            print(line, flush=True)


if __name__ == "__main__":
    main()
