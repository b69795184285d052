"""The cluster pipeline in bounded memory, end to end: time and peak memory per stage, planted-group recovery.

    python benchmarks/bench_cluster_stream.py [--n 100000] [--d 64] [--k 45] [--block 65536] [--knn exact|random]
    python benchmarks/bench_cluster_stream.py --stage [--n 1000000] [--groups 50]     (the cluster stage itself)

Input, prepared in a child process (its memory is not this one's): bench_cluster.planted's data (n/2000
groups of 30-200 points, or --groups, std 0.3, around a N(0, I_d) cloud; --cloud mixture: around
bench_knn's 1000 whitened Gaussian blobs of Zipf sizes, structure that an approximate k-NN search
can use, where at N = 1e6 and d = 64 its recall@45 on the structureless N(0, I) is 0.44) with the groups' centres moved to --radius
(default 6 sqrt(d / 32): planted's radius 6 was chosen for d = 32, where a group is a little farther from
the cloud's points, ~sqrt(36 + d), than they are from each other, ~sqrt(2 d); at d = 64 and radius 6 the
groups are nearer, every cloud point's neighbours, and no group is found, in memory or here) saved as a
susceptibility run directory (chi [d, n] float64 in shards of 2^20 tokens, SusceptibilityResult.save).
Then, in this process, each a stage:

  whiten   whiten_to_file of read_chi's token blocks of --block tokens -> whitened.npy (float32, memmapped)
  knn      knn (exact; backend "auto": knn.resolve_backend's choice) of the memmapped matrix; the neighbour
           arrays saved as .npy and reopened memmapped. --knn random instead draws k random neighbours per
           point with sorted random distances, to time the graph build where the exact search would take
           hours (no clusters to find then: the cluster stage is skipped)
  graph    build_graph (memory_budget --graph-budget GiB) -> graph/, then load_graph (verifies the checksums)
  cluster  cluster_graph on the memmapped graph (spec alpha = 1e-3, eps = 1e-7)

--stage runs the cluster stage (run_cluster_stage, spec settings, backend "auto", memory_budget_gib
--graph-budget) on the prepared directory instead, as one timed block, and prints the times its
summary.json records per step, the k-NN backend and recall, and the recovery from its labels.parquet.

Per stage: wall time; peak RSS during the stage (VmHWM, reset before it through /proc/self/clear_refs)
and peak anonymous memory (RssAnon sampled every 10 ms: RSS less the file-backed pages), and at its end the resident anonymous memory and the resident file-backed pages (memmaps, which the kernel
can drop); at the end the whole process's peak RSS (the stages' largest: the figure getrusage gives
bench_cluster.py) and how many planted groups a cluster recovers with Jaccard >= 0.8.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lit_susc.cluster import cluster_graph, knn
from lit_susc.cluster.graph import build_graph, load_graph
from lit_susc.cluster.whiten import whiten_to_file
from lit_susc.result import SusceptibilityResult, read_chi


def _status(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status, in GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 2**20 for key in keys}


PEAKS: list[float] = []
"""Every stage's peak RSS: their max is the process's (resetting VmHWM resets getrusage's figure too)."""


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block and report its peak RSS (VmHWM, reset at its start), its peak anonymous memory
    (sampled every 10 ms) and the RSS left at its end."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    anonymous, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            anonymous[0] = max(anonymous[0], _status("RssAnon")["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    m = _status("VmHWM", "RssAnon", "RssFile")
    PEAKS.append(m["VmHWM"])
    print(f"  {name:8s} {seconds:7.1f} s   peak RSS {m['VmHWM']:.2f} GiB, anonymous {max(anonymous[0], m['RssAnon']):.2f} "
          f"GiB   at the end: anonymous {m['RssAnon']:.2f} GiB, file pages {m['RssFile']:.2f} GiB", flush=True)


def prepare(run: Path, n: int, d: int, radius: float, groups: int | None, cloud: str) -> None:
    from bench_cluster import planted
    from bench_knn import _data

    X, truth = planted(n, d, groups=groups)
    if cloud == "mixture":  # bench_knn's 1000 whitened blobs instead of N(0, I)
        X[truth == -1] = _data("mixture", int(np.sum(truth == -1)), d, np.random.default_rng(1))
    for g in range(truth.max() + 1):  # each group's centre moved from radius 6 to ``radius``, its spread kept
        centre = X[truth == g].mean(0)
        X[truth == g] += (radius / np.linalg.norm(centre) - 1) * centre
    # the token table of a sampling run's first columns (the cluster stage copies it into labels.parquet)
    tokens = pa.table({"doc_id": np.arange(n) // 512, "position": np.arange(n) % 512})
    SusceptibilityResult(torch.from_numpy(X.T.astype(np.float64)), [f"c{j}" for j in range(d)], "seed", 1.0,
                         tokens=tokens).save(run)
    np.save(run / "truth.npy", truth)


def random_neighbours(work: Path, n: int, k: int, rows: int = 1 << 18) -> None:
    """idx.npy, dist.npy [n, k]: k distinct random neighbours per point, none the point itself, with
    sorted uniform distances, written by row blocks."""
    rng = np.random.default_rng(0)
    idx = np.lib.format.open_memmap(work / "idx.npy", mode="w+", dtype=np.int64, shape=(n, k))
    dist = np.lib.format.open_memmap(work / "dist.npy", mode="w+", dtype=np.float64, shape=(n, k))
    stripe = (n - 1) // k  # neighbour c of i is i + c * stripe + [1, stripe]
    for a in range(0, n, rows):
        b = min(a + rows, n)
        idx[a:b] = (np.arange(a, b)[:, None] + np.arange(k) * stripe + rng.integers(1, stripe + 1, (b - a, k))) % n
        dist[a:b] = np.sort(rng.random((b - a, k)), axis=1)
    idx.flush()
    dist.flush()


def recovered(labels: np.ndarray, truth: np.ndarray) -> int:
    """Planted groups with a cluster of Jaccard >= 0.8."""
    found = 0
    for g in range(truth.max() + 1):
        G = truth == g
        found += max((np.sum(G & (labels == c)) / np.sum(G | (labels == c)) for c in np.unique(labels[G]) if c >= 0),
                     default=0.0) >= 0.8
    return found


def run_stage(run: Path, k: int, budget_gib: float, truth: np.ndarray) -> None:
    import json

    import pyarrow.parquet as pq

    from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage

    with stage("stage"):
        out = run_cluster_stage(ClusterConfig(input_dir=str(run), k=k, memory_budget_gib=budget_gib), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    print("  " + ", ".join(f"{key} {summary[key]:.1f} s" for key in ("whiten_s", "knn_s", "graph_s", "cluster_s")) +
          f"; k-NN {summary['knn_backend']}, recall {summary['knn_recall']}; summary's peak RSS "
          f"{summary['peak_rss_gib']:.2f} GiB")
    labels = pq.read_table(out / "labels.parquet", columns=["label"]).column("label").to_numpy()
    print(f"  clusters {summary['clusters']}, planted groups found {recovered(labels, truth)}/{truth.max() + 1}, "
          f"cloud share clustered {np.mean(labels[truth == -1] >= 0):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--block", type=int, default=1 << 16, help="tokens per block read for whitening")
    ap.add_argument("--knn", choices=["exact", "random"], default="exact")
    ap.add_argument("--radius", type=float, default=None,
                    help="groups' distance from the cloud's centre (default 6 sqrt(d / 32): planted's 6 at d = 32)")
    ap.add_argument("--graph-budget", type=float, default=1.0, help="build_graph's memory_budget, GiB")
    ap.add_argument("--groups", type=int, default=None, help="planted groups (default n / 2000)")
    ap.add_argument("--cloud", choices=["gaussian", "mixture"], default="gaussian",
                    help="the points around the groups: N(0, I), or bench_knn's 1000 whitened blobs of Zipf sizes")
    ap.add_argument("--stage", action="store_true", help="run the cluster stage itself (run_cluster_stage)")
    ap.add_argument("--dir", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    radius = 6.0 * np.sqrt(args.d / 32) if args.radius is None else args.radius
    if args.prepare is not None:
        prepare(args.prepare, args.n, args.d, radius, args.groups, args.cloud)
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work, run = Path(tmp), Path(tmp) / "run"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--prepare", str(run), "--n", str(args.n), "--d", str(args.d),
                        "--radius", str(radius), "--cloud", args.cloud,
                        *(["--groups", str(args.groups)] if args.groups else [])],
                       check=True, cwd=Path(__file__).parent)
        truth = np.load(run / "truth.npy")
        print(f"N={args.n} d={args.d} k={args.k} groups={truth.max() + 1} cloud={args.cloud} radius={radius:.2f} "
              f"block={args.block} "
              f"knn={args.knn} "
              f"(input prepared in {time.perf_counter() - t:.1f} s)", flush=True)
        print(f"  after the imports: RSS {_status('VmRSS')['VmRSS']:.2f} GiB", flush=True)
        n = args.n
        if args.stage:
            run_stage(run, args.k, args.graph_budget, truth)
            return
        with stage("whiten"):
            blocks = lambda: (read_chi(run, a, min(a + args.block, n)).T.numpy()
                              for a in range(0, n, args.block))
            _, path = whiten_to_file(blocks, work / "whitened.npy")
        with stage("knn"):
            if args.knn == "exact":
                idx, dist = knn(np.load(path, mmap_mode="r"), args.k)
                np.save(work / "idx.npy", idx)
                np.save(work / "dist.npy", dist)
                del idx, dist
            else:
                random_neighbours(work, n, args.k)
        with stage("graph"):
            idx, dist = np.load(work / "idx.npy", mmap_mode="r"), np.load(work / "dist.npy", mmap_mode="r")
            G = load_graph(build_graph(idx, dist, work / "graph", memory_budget=int(args.graph_budget * 2**30)))
            print(f"           nnz/N {G.nnz / n:.1f}, on disk {(G.nnz * 8 + n * 16) / 2**20:.0f} MiB "
                  "(int32 + float32 per edge, int64 + float64 per node)")
        if args.knn == "exact":
            with stage("cluster"):
                labels, stats = cluster_graph(G, 1e-3, 1e-7, progress=False)
            print(f"  clusters {len(stats)}, planted groups found {recovered(labels, truth)}/{truth.max() + 1}, "
                  f"cloud share clustered {np.mean(labels[truth == -1] >= 0):.4f}")
        print(f"  process peak RSS {max(PEAKS):.2f} GiB (the stages' largest; what getrusage would report)")


if __name__ == "__main__":
    main()
