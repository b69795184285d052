"""Exact k-nearest-neighbour search and the weighted, symmetric k-NN graph.

Distances are Euclidean. Three interchangeable backends give the same neighbours (up to
ties): "keops" (pykeops LazyTensor argKmin, never materialises N x N; the GPU choice),
"torch" (chunked ||y||^2 - 2 x.y + topk, CPU or GPU), "sklearn" (NearestNeighbors,
brute force on CPU threads).
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["graph_from_knn", "knn", "knn_graph", "resolve_backend", "row_blocks"]

Backend = Literal["auto", "keops", "torch", "sklearn"]
Kernel = Literal["gaussian_local", "gaussian", "unweighted"]


def _check_input(X, k: int) -> np.ndarray | torch.Tensor:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer (number of neighbours), got k={k!r}")
    if isinstance(X, torch.Tensor):
        finite = bool(torch.isfinite(X).all())
        shape = tuple(X.shape)
    else:
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
        finite = bool(np.isfinite(X).all())
        shape = X.shape
    if len(shape) != 2:
        raise ValueError(f"X must be a 2-D array [N, d], got shape {shape}")
    if not finite:
        raise ValueError("X contains NaN or inf values; drop or impute those rows before building the k-NN graph")
    if shape[0] <= k:
        raise ValueError(f"need more points than neighbours: N={shape[0]} <= k={k}; lower k or add points")
    return X


def resolve_backend(backend: Backend = "auto", device: str | torch.device | None = None) -> str:
    """The backend "auto" stands for, measured on this project's machines (bench_knn.py):

    - a CUDA device (given, or available when device is None) -> "keops" (design.md: KeOps
      is the fast exact k-NN on GPU; not re-measured here, no GPU was available);
    - otherwise -> "sklearn", the fastest where k-NN time matters: 2 CPU cores (shared, +-2x),
      d = 32, k = 45, float32: N = 1e5 sklearn 30 s, torch 58 s, keops 159 s; at N = 1e4 all
      take 0.5-1.6 s (torch first). keops also compiles ~7 s on first use.
    """
    if backend != "auto":
        if backend not in ("keops", "torch", "sklearn"):
            raise ValueError(f"unknown k-NN backend {backend!r}; use 'auto', 'keops', 'torch' or 'sklearn'")
        return backend
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return "keops" if cuda else "sklearn"


def _drop_self(idx: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """From k+1 candidates per row drop the row's own id (row i is point start + i; or, with
    duplicates that push it out, the farthest candidate)."""
    n = idx.shape[0]
    is_self = idx == np.arange(start, start + n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    # a duplicate row can list itself twice only if idx has repeats, which no backend returns
    return idx[~is_self].reshape(n, k)


def _default_chunk(n: int, budget: int = 1 << 26) -> int:
    return max(1, min(n, budget // max(n, 1)))


def row_blocks(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) blocks of range(n), one per part, sizes differing by at most 1
    (how the cluster stage splits k-NN query rows across ranks)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    edges = [(n * r) // parts for r in range(parts + 1)]
    return list(itertools.pairwise(edges))


def _rows(rows: slice | None, n: int) -> tuple[int, int]:
    if rows is None:
        return 0, n
    if not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice of query rows, got {type(rows).__name__}")
    start, stop, step = rows.indices(n)
    if step != 1:
        raise ValueError(f"rows must be a contiguous slice (step 1), got step {step}")
    return start, max(start, stop)


def _knn_torch(X: torch.Tensor, k: int, chunk: int, start: int, stop: int) -> np.ndarray:
    sq = (X * X).sum(1)
    out = np.empty((stop - start, k + 1), np.int64)
    for a in range(start, stop, chunk):
        b = min(a + chunk, stop)
        # ||x_i||^2 is constant along a row, so it is left out of the ranking key
        key = torch.addmm(sq[None, :], X[a:b], X.T, alpha=-2.0)
        top = torch.topk(key, k + 1, dim=1, largest=False, sorted=True)
        out[a - start:b - start] = top.indices.cpu().numpy()
    return out


def _knn_keops(X: torch.Tensor, k: int, chunk: int, start: int, stop: int) -> np.ndarray:
    from pykeops.torch import LazyTensor

    xj = LazyTensor(X[None, :, :])
    out = np.empty((stop - start, k + 1), np.int64)
    for a in range(start, stop, chunk):
        b = min(a + chunk, stop)
        xi = LazyTensor(X[a:b, None, :])
        d2 = ((xi - xj) ** 2).sum(-1)
        out[a - start:b - start] = d2.argKmin(k + 1, dim=1).long().cpu().numpy()
    return out


def _knn_sklearn(X: np.ndarray, k: int, start: int, stop: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", n_jobs=-1).fit(X)
    return nn.kneighbors(X[start:stop], return_distance=False).astype(np.int64)


def knn(
    X: np.ndarray | torch.Tensor,
    k: int,
    backend: Backend = "auto",
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    rows: slice | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of X [N, d], the point itself excluded.

    Returns (indices [N, k] int64, distances [N, k] float64), ascending by distance, where
    distances[i, j] = ||X[i] - X[indices[i, j]]||_2 recomputed exactly from the coordinates
    (the search's expanded-square distances are only used for ranking).

    rows: a contiguous slice of query rows (default all). Only those rows are searched, against
    all N points; the arrays returned have one row per query, row i being point rows.start + i,
    and equal knn(X, k)[0][rows], knn(X, k)[1][rows] (each query row's arithmetic is the same
    whatever the blocking; the cluster stage splits the queries across ranks this way).

    chunk_size: query rows per block (torch: default keeps a block of the N x N distance
    matrix at ~2^26 entries; keops: default 2^20 rows, so the output block on the device
    stays O(chunk k)). device: torch device for "torch"/"keops" (default: CUDA if available).
    """
    X = _check_input(X, k)
    name = resolve_backend(backend, device)
    start, stop = _rows(rows, X.shape[0])
    if name == "sklearn":
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X
        cand = _knn_sklearn(Xn, k, start, stop)
        Xd = torch.as_tensor(Xn)
    else:
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        Xt = torch.as_tensor(X).to(dev)
        if not Xt.is_floating_point():
            Xt = Xt.double()
        Xt = Xt.contiguous()
        if name == "torch":
            cand = _knn_torch(Xt, k, chunk_size or _default_chunk(Xt.shape[0]), start, stop)
        else:
            cand = _knn_keops(Xt, k, chunk_size or (1 << 20), start, stop)
        Xd = Xt.cpu()
    idx = _drop_self(cand, k, start)
    dist = np.empty(idx.shape, np.float64)
    step = max(1, (1 << 24) // (k * Xd.shape[1]))
    it = torch.from_numpy(idx)
    for a in range(0, stop - start, step):
        b = min(a + step, stop - start)
        diff = Xd[start + a:start + b, None, :].double() - Xd[it[a:b]].double()
        dist[a:b] = torch.linalg.vector_norm(diff, dim=-1).numpy()
    # re-sort by the exact distance (the expanded form can swap near-ties), ties by index
    order = np.lexsort((idx, dist), axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)


LOCAL_SCALE_NEIGHBOR = 7
"""The neighbour whose distance is a point's scale s_i in the Gaussian kernels (knn_graph), unless told otherwise."""


def knn_graph(
    X: np.ndarray | torch.Tensor,
    k: int = 45,
    *,
    backend: Backend = "auto",
    kernel: Kernel = "gaussian_local",
    local_scale_neighbor: int = LOCAL_SCALE_NEIGHBOR,
    sigma: float | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> sp.csr_matrix:
    """Symmetric weighted k-NN graph of the rows of X, as a float64 CSR [N, N], no self-loops.

    Edge set: the union of the directed k-NN relations (i ~ j if j is among i's k nearest or
    i among j's). Every kernel below is symmetric in (i, j), so the union equals taking
    w_ij = max(w_i->j, w_j->i). Kernels, d_ij = ||x_i - x_j||:
      "gaussian_local" (default): w_ij = exp(-d_ij^2 / (s_i s_j)), s_i = distance from i to its
          local_scale_neighbor-th nearest neighbour (self-tuning scales, Zelnik-Manor & Perona);
      "gaussian": w_ij = exp(-d_ij^2 / sigma^2), sigma given or the median of the s_i;
      "unweighted": w_ij = 1.
    Weights that underflow to 0 are dropped, which can leave a far outlier isolated
    (degree 0); the push and sweep treat such nodes consistently.
    """
    X = _check_input(X, k)
    _check_kernel(kernel, k, local_scale_neighbor, sigma)
    idx, dist = knn(X, k, backend, chunk_size=chunk_size, device=device)
    return graph_from_knn(idx, dist, kernel=kernel, local_scale_neighbor=local_scale_neighbor, sigma=sigma)


def _check_kernel(kernel: str, k: int, local_scale_neighbor: int, sigma: float | None) -> bool:
    if kernel not in ("gaussian_local", "gaussian", "unweighted"):
        raise ValueError(f"unknown kernel {kernel!r}; use 'gaussian_local', 'gaussian' or 'unweighted'")
    needs_scales = kernel == "gaussian_local" or (kernel == "gaussian" and sigma is None)
    if needs_scales and not 1 <= local_scale_neighbor <= k:
        raise ValueError(f"local_scale_neighbor must lie in [1, k={k}], got {local_scale_neighbor}")
    return needs_scales


def graph_from_knn(
    idx: np.ndarray,
    dist: np.ndarray,
    *,
    kernel: Kernel = "gaussian_local",
    local_scale_neighbor: int = LOCAL_SCALE_NEIGHBOR,
    sigma: float | None = None,
) -> sp.csr_matrix:
    """The graph of knn_graph from precomputed neighbours: idx, dist [N, k] as knn returns them
    (ascending distances, self excluded), e.g. gathered from row blocks searched on several
    ranks. knn_graph(X, k, ...) == graph_from_knn(*knn(X, k), ...)."""
    idx, dist = np.asarray(idx, np.int64), np.asarray(dist, np.float64)
    if idx.ndim != 2 or idx.shape != dist.shape:
        raise ValueError(f"idx and dist must both be [N, k], got shapes {idx.shape} and {dist.shape}")
    n, k = idx.shape
    needs_scales = _check_kernel(kernel, k, local_scale_neighbor, sigma)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.ravel()
    d = dist.ravel()
    if kernel == "unweighted":
        w = np.ones_like(d)
    else:
        s = dist[:, local_scale_neighbor - 1] if needs_scales else None
        if kernel == "gaussian_local":
            # duplicates make s_i = 0; a floor keeps 0/0 from appearing (such pairs get w = 1)
            floor = max(float(np.median(s)) * 1e-12, np.finfo(np.float64).tiny)
            s = np.maximum(s, floor)
            w = np.exp(-(d * d) / (s[rows] * s[cols]))
        else:
            sig = float(np.median(s)) if sigma is None else float(sigma)
            if not sig > 0:
                raise ValueError(f"the Gaussian scale must be positive, got sigma={sig}; pass sigma explicitly")
            w = np.exp(-(d * d) / (sig * sig))
    A = sp.coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    # self is never among the neighbours (_drop_self), so there is no diagonal to clear
    A = A.maximum(A.T).tocsr()
    A.eliminate_zeros()
    A.sort_indices()
    return A
