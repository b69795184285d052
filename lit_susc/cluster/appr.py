"""Approximate personalized PageRank by the Andersen-Chung-Lang push (lazy walk).

The vector approximated is

    pr = alpha * s + (1 - alpha) * pr @ W,    W = (I + D^-1 A) / 2,

s the start distribution, A a symmetric non-negative weight matrix, d(u) = sum_v A[u, v]
(self-loops included). Push at u:

    p(u) += alpha * r(u)
    r(u) <- (1 - alpha) * r(u) / 2
    r(v) += (1 - alpha) * r(u) * w_uv / (2 d(u))   for every neighbour v  (r(u) before the update)

repeated, in FIFO order (a pushed node re-enters the queue before its neighbours, as in
ACL's and LocalGraphClustering's code), while some r(u) >= eps * d(u). Invariant: p + pr(r) = pr(s), hence
||p - pr(s)||_1 <= ||r||_1, and on return (unless max_pushes stopped it) r(u) < eps * d(u)
everywhere.

Every alpha in lit_susc.cluster is this LAZY walk's teleport probability. The spec's "return with probability
alpha" is the plain walk pr = alpha' s + (1 - alpha') pr D^-1 A; the two agree when
alpha' = 2 alpha / (1 + alpha) (so the spec's alpha = 1e-3 read as a lazy alpha is a plain
alpha' ~ 2e-3). networkx.pagerank(G, alpha=1 - alpha', personalization={seed: 1}) is the exact
pr(seed). LocalGraphClustering's acl/acl_weighted use the same lazy convention and call eps rho.

Isolated nodes (d(u) = 0) keep all mass that reaches them: the lazy walk never leaves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from numba import njit

from .graph import Graph, row_sums

__all__ = ["PushWorkspace", "approximate_pagerank", "graph_arrays"]


def graph_arrays(A: sp.spmatrix | sp.sparray | Graph) -> Graph:
    """The arrays the push and the sweep run on: CSR (indptr, indices, data) and degrees d(u) = row sums.

    A ``Graph`` (lit_susc.cluster.graph, e.g. ``load_graph``'s memory-mapped one with int32 indices and
    float32 weights) is used as it is, uncopied: the jitted kernels compile for its dtypes, and its
    weights were checked when it was built. A scipy matrix gives indptr int64, indices int64, data
    float64 and its row sums (graph.row_sums: in column order, as a built graph's), in memory.
    """
    if isinstance(A, Graph):
        if A.indptr.shape[0] != A.deg.shape[0] + 1:
            raise ValueError(f"the graph's indptr has {A.indptr.shape[0]} entries for {A.deg.shape[0]} nodes")
        return A
    A = sp.csr_matrix(A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"the graph must be a square matrix, got shape {A.shape}")
    if A.nnz and (A.data.min() < 0 or not np.isfinite(A.data).all()):
        raise ValueError("edge weights must be finite and non-negative")
    A.sort_indices()
    indptr = A.indptr.astype(np.int64)
    indices = A.indices.astype(np.int64)
    data = A.data.astype(np.float64)
    return Graph(indptr, indices, data, row_sums(indptr, data))


class PushWorkspace:
    """Dense per-thread buffers of length N, reset through the touched list so one seed
    costs O(work), not O(N). ~34 bytes per node."""

    def __init__(self, n: int):
        self.p = np.zeros(n, np.float64)
        self.r = np.zeros(n, np.float64)
        self.seen = np.zeros(n, np.bool_)
        self.inq = np.zeros(n, np.bool_)
        self.queue = np.empty(n, np.int64)
        self.touched = np.empty(n, np.int64)


@njit(cache=True, nogil=True)
def _push(indptr, indices, data, deg, seeds, alpha, eps, max_pushes, p, r, seen, inq, queue, touched):
    """ACL push from the uniform distribution on `seeds`. Workspaces must be clean on entry;
    returns (n_touched, n_pushes); touched[:n_touched] lists every node with p or r nonzero."""
    n = deg.shape[0]
    nt = 0
    head = 0
    size = 0
    m = seeds.shape[0]
    for i in range(m):
        s = seeds[i]
        if not seen[s]:
            seen[s] = True
            touched[nt] = s
            nt += 1
        r[s] += 1.0 / m
    for i in range(nt):
        s = touched[i]
        if r[s] >= eps * deg[s]:
            inq[s] = True
            queue[(head + size) % n] = s
            size += 1
    pushes = 0
    while size > 0 and pushes < max_pushes:
        u = queue[head]
        head = (head + 1) % n
        size -= 1
        inq[u] = False
        ru = r[u]
        du = deg[u]
        if du <= 0.0:
            # an isolated node is absorbing for the lazy walk: pr(u) gets all of r(u)
            p[u] += ru
            r[u] = 0.0
            pushes += 1
            continue
        if ru < eps * du:
            continue
        p[u] += alpha * ru
        r[u] = 0.5 * (1.0 - alpha) * ru
        # u goes back in line before its neighbours (ACL's and LocalGraphClustering's order);
        # a self-loop share is caught in the neighbour loop, where v == u
        if r[u] >= eps * du:
            inq[u] = True
            queue[(head + size) % n] = u
            size += 1
        scale = 0.5 * (1.0 - alpha) * (ru / du)
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            w = data[e]
            if w == 0.0:
                continue
            if not seen[v]:
                seen[v] = True
                touched[nt] = v
                nt += 1
            r[v] += scale * w
            if (not inq[v]) and r[v] >= eps * deg[v]:
                inq[v] = True
                queue[(head + size) % n] = v
                size += 1
        pushes += 1
    return nt, pushes


@njit(cache=True, nogil=True)
def _reset(nt, p, r, seen, inq, touched):
    for i in range(nt):
        u = touched[i]
        p[u] = 0.0
        r[u] = 0.0
        seen[u] = False
        inq[u] = False


def _seed_array(seed: int | Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    seeds = np.atleast_1d(np.asarray(seed, dtype=np.int64))
    if seeds.ndim != 1 or seeds.size == 0:
        raise ValueError("seed must be a node id or a non-empty list of node ids")
    if seeds.min() < 0 or seeds.max() >= n:
        raise ValueError(f"seed ids must lie in [0, {n}), got {seeds.min()}..{seeds.max()}")
    return seeds


def approximate_pagerank(
    A: sp.spmatrix | sp.sparray | Graph,
    seed: int | Sequence[int],
    alpha: float = 1e-3,
    eps: float = 1e-7,
    max_pushes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ACL push approximation of the lazy personalized PageRank pr(s) (module docstring).

    A: symmetric (not checked) non-negative CSR [N, N]; weighted; self-loops allowed and
        counted in d(u); or a ``Graph`` (graph_arrays), e.g. memory-mapped from disk.
    seed: a node id, or a list of ids (s uniform on them; repeated ids count repeatedly).
    alpha: lazy-walk teleport probability (plain-walk alpha' = 2 alpha / (1 + alpha)).
    eps: push while r(u) >= eps * d(u).
    max_pushes: cap on pushes; None -> none (each push moves >= alpha * eps * d(u) into p, so
        there are at most 1 / (alpha * eps * min d) of them). If the cap stops the push early,
        ||p - pr||_1 <= ||r||_1 still holds but r(u) < eps * d(u) need not.

    Returns dense float64 arrays (p, r) of length N (O(N) memory; cluster_graph instead
    reuses per-thread buffers and keeps only the touched nodes).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not eps > 0.0:
        raise ValueError(f"eps must be positive, got {eps}")
    indptr, indices, data, deg = graph_arrays(A)
    n = deg.shape[0]
    seeds = _seed_array(seed, n)
    cap = np.iinfo(np.int64).max if max_pushes is None else int(max_pushes)
    ws = PushWorkspace(n)
    _push(indptr, indices, data, deg, seeds, alpha, eps, cap, ws.p, ws.r, ws.seen, ws.inq, ws.queue, ws.touched)
    return ws.p, ws.r
