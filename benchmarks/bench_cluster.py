"""End-to-end find_clusters on planted groups + a diffuse cloud: wall time, peak memory, recovery.

    python benchmarks/bench_cluster.py [--n 100000] [--d 32] [--alpha 1e-3] [--eps 1e-7]

Data: n points; ~n/2000 tight groups (sizes 30-200, std 0.3, centres at radius 6) around a
N(0, I_d) cloud. Prints the time of each stage, peak RSS (getrusage), how many planted groups
have a cluster with Jaccard >= 0.8, and the share of the cloud that lands in clusters.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from lit_susc.cluster import cluster_graph, knn_graph, whiten


def planted(n: int, d: int, seed: int = 0, groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n points: ``groups`` (default n / 2000) groups of 30-200 points, std 0.3 around centres at radius 6,
    in a N(0, I_d) cloud; (X float32 [n, d], truth: group id or -1)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(30, 201, groups or max(1, n // 2000))
    parts, truth = [rng.standard_normal((n - sizes.sum(), d))], [np.full(n - sizes.sum(), -1)]
    for g, s in enumerate(sizes):
        c = rng.standard_normal(d)
        parts.append(6.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
        truth.append(np.full(s, g))
    return np.vstack(parts).astype(np.float32), np.concatenate(truth)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=1e-7)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-pushes", type=int, default=None)
    args = ap.parse_args()

    X, truth = planted(args.n, args.d)
    t0 = time.perf_counter()
    Z, _ = whiten(X)
    t1 = time.perf_counter()
    A = knn_graph(Z, args.k, backend=args.backend)
    t2 = time.perf_counter()
    labels, stats = cluster_graph(A, args.alpha, args.eps, max_pushes=args.max_pushes, progress=False)
    t3 = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    found = 0
    for g in range(truth.max() + 1):
        G = truth == g
        best = max((np.sum(G & (labels == c)) / np.sum(G | (labels == c)) for c in np.unique(labels[G]) if c >= 0),
                   default=0.0)
        found += best >= 0.8
    cloud_in = np.mean(labels[truth == -1] >= 0)
    phis = np.array([s["conductance"] for s in stats])
    print(f"N={args.n} d={args.d} k={args.k} alpha={args.alpha:g} eps={args.eps:g}: whiten {t1 - t0:.1f} s, "
          f"knn_graph {t2 - t1:.1f} s, cluster_graph {t3 - t2:.1f} s, total {t3 - t0:.1f} s; peak RSS {peak_gib:.2f} GiB")
    print(f"clusters {len(stats)} (rounds {stats[-1]['round'] + 1 if stats else 0}), planted groups found "
          f"{found}/{truth.max() + 1}, cloud share clustered {cloud_in:.4f}, "
          f"conductance range {phis.min() if len(phis) else float('nan'):.3f}-{phis.max() if len(phis) else float('nan'):.3f}")


if __name__ == "__main__":
    main()
