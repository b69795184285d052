"""What the cluster stage costs per token, for sizing a large run (README "Clustering").

    python benchmarks/bench_cluster_scale.py [--sizes 20000 100000] [--d 32] [--alpha 1e-3] [--eps 1e-7]

Same planted data as bench_cluster.py. For each N prints, measured: whiten / k-NN / graph /
cluster wall time, graph edges per node (nnz / N of the symmetric CSR) and its bytes, and,
from a counting wrapper around the per-seed push + sweep: the number of seeds the loop ran,
tokens retired (visited) per seed, push + sweep seconds per seed (mean and 95th percentile,
one thread) and the share of seeds stopped by max_pushes.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

import numpy as np
from bench_cluster import planted

from lit_susc.cluster import cluster_graph, clustering, knn, whiten
from lit_susc.cluster.clustering import DEFAULT_MAX_PUSHES
from lit_susc.cluster.knn import graph_from_knn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=1e-7)
    ap.add_argument("--threads", type=int, default=None, help="push threads (default: all CPUs)")
    args = ap.parse_args()

    inner = clustering._seed_cluster
    log: list[tuple[float, int]] = []
    lock = threading.Lock()

    def counted(*a):
        t = time.perf_counter()
        out = inner(*a)
        with lock:
            log.append((time.perf_counter() - t, int(out[3])))
        return out

    clustering._seed_cluster = counted
    for n in args.sizes:
        log.clear()
        X, _ = planted(n, args.d)
        t0 = time.perf_counter()
        Z, _ = whiten(X)
        t1 = time.perf_counter()
        idx, dist = knn(Z, args.k)
        t2 = time.perf_counter()
        A = graph_from_knn(idx, dist)
        t3 = time.perf_counter()
        _labels, stats = cluster_graph(A, args.alpha, args.eps, n_threads=args.threads, progress=False)
        t4 = time.perf_counter()
        sec = np.array([s for s, _ in log])
        pushes = np.array([p for _, p in log])
        graph_bytes = A.nnz * (8 + 8) + (n + 1) * 8  # graph_arrays: int64 indices, float64 weights
        print(f"N={n} d={args.d} k={args.k} alpha={args.alpha:g} eps={args.eps:g}: whiten {t1 - t0:.2f} s, "
              f"knn {t2 - t1:.1f} s, graph {t3 - t2:.1f} s, cluster {t4 - t3:.1f} s; "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        print(f"  graph: nnz/N {A.nnz / n:.1f}, {graph_bytes / 2**20:.1f} MiB as pushed (16 B/edge)")
        print(f"  seeds {len(log)}, tokens retired per seed {n / len(log):.1f}, clusters {len(stats)}; "
              f"push+sweep per seed mean {sec.mean() * 1e3:.1f} ms, p95 {np.quantile(sec, 0.95) * 1e3:.1f} ms, "
              f"sum {sec.sum():.1f} s; pushes per seed mean {pushes.mean():.0f}, "
              f"at the cap {np.mean(pushes >= DEFAULT_MAX_PUSHES):.3f}", flush=True)


if __name__ == "__main__":
    main()
