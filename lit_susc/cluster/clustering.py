"""Local clustering from many seeds (Gordon et al. 2026, sec. 3.1; spec "Clustering").

Loop, until every node is visited:
  1. take the next `seeds_per_round` unvisited nodes of a random permutation (rng = `seed`);
  2. for each seed s, in parallel: ACL push from s (appr.py), sweep of p (sweep.py), keep the
     prefix S_s of lowest conductance with min_size <= |S_s| <= max_fraction * N;
  3. candidates with Phi(S_s) < conductance_threshold are taken in order of (Phi, seed id):
     each claims its still unlabelled members (so a point wanted by two clusters of one round
     goes to the lower conductance, and points labelled in earlier rounds keep their label);
     a candidate is kept only if it claims >= min_size points and >= min_free_fraction of S_s;
  4. every S_s (kept or not) and every seed are marked visited.
Visited-but-unlabelled points remain claimable by later clusters: "visited" only stops a
point from being a seed. Results depend on `seed` and `seeds_per_round` but not on n_threads.
A consequence of step 4 (the spec's rule): a small tight group swallowed whole by a rejected
prefix before any of its points is drawn as a seed is never found. Cloud prefixes often
reach max_fraction * N, so on small graphs lower max_fraction or seeds_per_round to reduce it.

Across ranks (world_size > 1): every rank holds the whole graph and draws the same seeds
(same permutation, same visited marks); rank r pushes and sweeps the seeds batch[r::world_size]
of each round, the (members, Phi, volume) candidates are all-gathered, and every rank applies
step 3 to the full round in seed order. Labels are therefore identical on every rank and equal
to the single-process result for the same `seed` and `seeds_per_round`.

Memory: ~35 bytes per node per thread of push workspace, plus the graph (file-backed pages for a
memory-mapped ``Graph``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit
from tqdm.auto import tqdm

from ..statistics import MIN_VARIANCE_RATIO
from .appr import PushWorkspace, _push, _reset, graph_arrays
from .graph import Graph
from .knn import Backend, Kernel, knn_graph
from .sweep import _sweep_nodes
from .whiten import whiten as _whiten

__all__ = ["cluster_graph", "find_clusters"]

# On the default graph planted tight groups score Phi = 0.01-0.14 and the diffuse cloud's
# best prefixes 0.5-0.9 (tests, bench_cluster.py); 0.2 sits in the gap, on the strict side.
DEFAULT_CONDUCTANCE_THRESHOLD = 0.2
# Enough to keep 2-16 worker threads busy; seeds of one round do not see each other's visited
# marks, so larger rounds waste more pushes on points another seed of the round explores.
# Fixed, not tied to the thread count, so that results do not depend on the machine.
DEFAULT_SEEDS_PER_ROUND = 16
# Per-seed push cap. Uncapped, alpha = 1e-3, eps = 1e-7 is global on graphs smaller than
# ~1 / (eps d) nodes: ~1e7 pushes per cloud seed at N = 3.5e3, several seconds each. Seeds
# inside planted groups of 30-200 points give the same sweep set for every cap from 5e4 to
# 2e6 pushes (N = 1e5, benchmarks/bench_cluster.py), i.e. a cluster of m points settles
# within ~250 m pushes; 2e5 keeps a 4x margin at ~0.1-0.3 s per seed (k = 45, one core).
# Raise it when looking for clusters of more than ~1000 points.
DEFAULT_MAX_PUSHES = 200_000


@njit(cache=True, nogil=True)
def _seed_cluster(indptr, indices, data, deg, vol_g, seeds, alpha, eps, max_pushes, min_size, max_size,
                  p, r, seen, inq, queue, touched, inset):
    """Push + sweep for one seed set on clean workspaces (left clean).
    Returns (best prefix, its Phi, its volume, pushes, support size)."""
    nt, pushes = _push(indptr, indices, data, deg, seeds, alpha, eps, max_pushes, p, r, seen, inq, queue, touched)
    ns = 0
    support = np.empty(nt, np.int64)
    for i in range(nt):
        if p[touched[i]] > 0.0:
            support[ns] = touched[i]
            ns += 1
    members, best_phi = _sweep_nodes(indptr, indices, data, deg, vol_g, support[:ns], p, min_size, max_size, inset)
    vol = 0.0
    for i in range(members.shape[0]):
        vol += deg[members[i]]
    _reset(nt, p, r, seen, inq, touched)
    return members, best_phi, vol, pushes, ns


def cluster_graph(
    A: sp.spmatrix | sp.sparray | Graph,
    alpha: float = 1e-3,
    eps: float = 1e-7,
    min_size: int = 20,
    seed: int = 0,
    *,
    max_fraction: float = 0.1,
    conductance_threshold: float = DEFAULT_CONDUCTANCE_THRESHOLD,
    seeds_per_round: int = DEFAULT_SEEDS_PER_ROUND,
    max_pushes: int | None = None,
    min_free_fraction: float = 0.5,
    n_threads: int | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[object], list] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Clusters of the graph A (symmetric, non-negative CSR, or a ``Graph``: appr.graph_arrays, e.g.
    graph.load_graph's memory-mapped one, used without copying) by the module's loop.

    alpha, eps: lazy-walk teleport and push tolerance (appr.approximate_pagerank).
    min_size: smallest cluster; max_fraction: largest cluster as a share of the N nodes.
    conductance_threshold: a prefix is a cluster iff Phi < this (default 0.2).
    seeds_per_round: seeds pushed concurrently before visited marks are updated (default 16;
        larger rounds parallelise better but explore the same cluster from several seeds).
    max_pushes: per-seed push cap, None -> DEFAULT_MAX_PUSHES = 2e5 (see there).
    min_free_fraction: a candidate must claim at least this share of its prefix.
    n_threads: worker threads (default: all CPUs); does not change the result.
    rank, world_size, all_gather: split each round's seeds across processes (module
        docstring). all_gather(obj) must return the list of every rank's obj in rank order;
        default torch.distributed.all_gather_object (in-memory, nothing is written). Every rank
        must call with the same graph and arguments; the result does not depend on world_size.

    Returns labels (int64 [N], -1 = unclustered; clusters numbered in order found) and one
    dict per cluster: label, size (points labelled), prefix_size, conductance (of the prefix),
    volume (of the prefix), seed, round.
    """
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    if min_size < 1 or seeds_per_round < 1:
        raise ValueError(f"min_size and seeds_per_round must be >= 1, got {min_size}, {seeds_per_round}")
    if not 0.0 < alpha < 1.0 or not eps > 0.0:
        raise ValueError(f"need 0 < alpha < 1 and eps > 0, got alpha={alpha}, eps={eps}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size > 1 and all_gather is None:
        all_gather = _all_gather_object
    indptr, indices, data, deg = graph_arrays(A)
    n = deg.shape[0]
    vol_g = float(deg.sum())
    cap = DEFAULT_MAX_PUSHES if max_pushes is None else int(max_pushes)
    max_size = int(np.floor(max_fraction * n))
    local_seeds = -(-seeds_per_round // world_size)  # the most seeds one rank gets in a round
    n_threads = max(1, min(n_threads or os.cpu_count() or 1, local_seeds))
    # members cross ranks as int32 where ids fit: half the bytes
    member_dtype = np.int32 if n < 2**31 else np.int64
    spaces = [(PushWorkspace(n), np.zeros(n, np.bool_)) for _ in range(n_threads)]

    def run(t: int, batch: np.ndarray) -> list[tuple]:
        ws, inset = spaces[t]
        out = []
        for s in batch[t::n_threads]:
            out.append(_seed_cluster(indptr, indices, data, deg, vol_g, np.array([s], np.int64), alpha, eps, cap,
                                     min_size, max_size, ws.p, ws.r, ws.seen, ws.inq, ws.queue, ws.touched, inset))
        return out

    labels = np.full(n, -1, np.int64)
    visited = np.zeros(n, np.bool_)
    order = np.random.default_rng(seed).permutation(n)
    stats: list[dict] = []
    pos = 0
    rnd = 0
    bar = tqdm(total=n, desc="clusters", disable=not progress, unit="pt")
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        while pos < n:
            batch = []
            while pos < n and len(batch) < seeds_per_round:
                if not visited[order[pos]]:
                    batch.append(order[pos])
                pos += 1
            if not batch:
                break
            batch = np.asarray(batch, np.int64)
            mine = batch[rank::world_size]
            parts = list(pool.map(run, range(n_threads), [mine] * n_threads)) if pool else [run(0, mine)]
            # undo the round-robin split so results line up with mine
            local = [None] * len(mine)
            for t, part in enumerate(parts):
                local[t::n_threads] = part
            if world_size > 1:
                # only what steps 3 and 4 need crosses ranks: (members, Phi, volume)
                shares = all_gather([(m.astype(member_dtype), float(phi), float(vol))
                                     for m, phi, vol, _, _ in local])
                results = [None] * len(batch)
                for r, share in enumerate(shares):
                    results[r::world_size] = [(m.astype(np.int64), phi, vol, 0, 0) for m, phi, vol in share]
            else:
                results = local
            cands = sorted(
                (float(phi), int(s), i) for i, (s, (mem, phi, _, _, _)) in enumerate(zip(batch, results))
                if len(mem) >= min_size and phi < conductance_threshold
            )
            for phi, s, i in cands:
                mem, _, vol, _, _ = results[i]
                free = mem[labels[mem] == -1]
                if len(free) >= min_size and len(free) >= min_free_fraction * len(mem):
                    labels[free] = len(stats)
                    stats.append({"label": len(stats), "size": len(free), "prefix_size": len(mem),
                                  "conductance": phi, "volume": float(vol), "seed_node": s, "round": rnd})
            newly = 0  # counted per set, not by summing visited: O(N) per round is too slow at 1e7+
            for mem in [r[0] for r in results] + [batch]:
                fresh = mem[~visited[mem]]
                visited[fresh] = True
                newly += len(fresh)
            bar.update(newly)
            bar.set_postfix(clusters=len(stats), refresh=False)
            rnd += 1
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return labels, stats


def _all_gather_object(obj: object) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def find_clusters(
    X: np.ndarray | torch.Tensor,
    k: int = 45,
    alpha: float = 1e-3,
    eps: float = 1e-7,
    min_size: int = 20,
    seed: int = 0,
    *,
    max_fraction: float = 0.1,
    conductance_threshold: float = DEFAULT_CONDUCTANCE_THRESHOLD,
    seeds_per_round: int = DEFAULT_SEEDS_PER_ROUND,
    max_pushes: int | None = None,
    min_free_fraction: float = 0.5,
    whiten: bool | Literal["whiten", "standardize"] = True,
    min_variance_ratio: float = MIN_VARIANCE_RATIO,
    backend: Backend = "auto",
    kernel: Kernel = "gaussian_local",
    local_scale_neighbor: int = 7,
    device: str | torch.device | None = None,
    n_threads: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[dict]]:
    """Cluster the rows of X [N, d]: whiten (whiten.py; True = "whiten", False = raw X) ->
    k-NN graph (knn.py) -> cluster_graph. Spec defaults: k = 45, alpha = 1e-3 (lazy walk; the
    plain-walk alpha' = 2 alpha / (1 + alpha)), eps = 1e-7, min_size = 20. Other arguments as
    in knn_graph and cluster_graph. Returns (labels, stats) as cluster_graph does.
    """
    if whiten:
        X, _ = _whiten(X, mode="whiten" if whiten is True else whiten, min_variance_ratio=min_variance_ratio)
    A = knn_graph(X, k, backend=backend, kernel=kernel, local_scale_neighbor=local_scale_neighbor, device=device)
    return cluster_graph(A, alpha, eps, min_size, seed, max_fraction=max_fraction,
                         conductance_threshold=conductance_threshold, seeds_per_round=seeds_per_round,
                         max_pushes=max_pushes, min_free_fraction=min_free_fraction, n_threads=n_threads,
                         progress=progress)
