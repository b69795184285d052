"""k-nearest-neighbour search and the weighted, symmetric k-NN graph.

Distances are Euclidean. Exact backends give the same neighbours (up to ties): "keops" (pykeops
LazyTensor argKmin, never materialises N x N; the GPU choice), "torch" (chunked
||y||^2 - 2 x.y + topk, CPU or GPU), "sklearn" (NearestNeighbors, brute force on CPU threads),
"faiss" (IndexFlatL2, on the GPU when faiss has GPU support and the device is CUDA, else on the
CPU threads). The approximate backend "faiss_ivf" (IndexIVFFlat, CPU) trades a measured recall
for time at large N; "auto" picks between exact and approximate from the cost of the exact
search (resolve_backend).

Why IVF-Flat and not HNSW for the approximate search (2 shared cores, d = 64, k = 45, recall@45 on
2000 sampled rows, times extrapolated from them; "mixture": 1000 Gaussian blobs of Zipf sizes,
spread 0.5, whitened, as bench_knn.py; "manifold": a 10-dimensional tanh manifold plus noise):
at N = 1e6 on the mixture IVF (nlist 4000, nprobe 64) reached 0.959 in ~500 s, HNSW (M 16,
efConstruction 80, efSearch 256) only 0.896 in ~1400 s, exact faiss ~3300 s; at N = 1e5 IVF
(nlist 1264, nprobe 32) 0.989 in 6 s, HNSW 0.947 in 27 s, exact 20 s. HNSW wins on the manifold
(0.994 against IVF's 0.956 at nprobe 128, in similar time), but IVF beats exact there too. And IVF
builds in parallel yet reproducibly (seeded k-means), so every rank builds the same index, while
faiss's parallel HNSW insertion depends on thread timing (one thread: 290 s to build at N = 1e6).
Neither reaches 0.95 on structureless N(0, I) data at d = 64 in less than exact time; the recall
check (knn) says so.
"""

from __future__ import annotations

import itertools
import os
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["KnnReport", "check_kernel", "check_recall", "edge_weights", "graph_from_knn", "kernel_scales", "knn", "knn_graph",
           "resolve_backend", "row_blocks"]

Backend = Literal["auto", "keops", "torch", "sklearn", "faiss", "faiss_ivf"]
Kernel = Literal["gaussian_local", "gaussian", "unweighted"]
EXACT_BACKENDS = ("keops", "torch", "sklearn", "faiss")
APPROXIMATE_BACKENDS = ("faiss_ivf",)

IVF_LISTS_PER_SQRT_N = 4
"""faiss_ivf partitions the N points into nlist = 4 sqrt(N) k-means cells (faiss's rule of thumb
4-16 sqrt(N)), fewer when N is small (IVF_TRAIN_PER_LIST)."""
IVF_TRAIN_PER_LIST = 39
"""Points per cell at least, in k-means and on average (below 39 faiss warns that k-means is ill-fed);
k-means trains on min(N, 64 nlist) points drawn with seed 0."""
DEFAULT_NPROBE = 128
"""Cells faiss_ivf scans per query (faiss's nprobe), its quality knob; nprobe >= nlist is exact.
Measured (d = 64, k = 45, whitened; module docstring's data): recall@45 at N = 1e5 (nlist 1265)
0.999 on the blob mixture and 0.956 on the manifold (64: 0.997, 0.912); at N = 1e6 (nlist 4000)
on the mixture 64 gave 0.959, so 128 keeps a margin above the 0.95 floor at twice the search:
bench_knn.py measured 0.993 in 1034 s there, against ~6300 s for exact faiss (N^2 from 1e5)."""
DEFAULT_MIN_RECALL = 0.95
"""The recall@k below which the approximate backend raises rather than return its neighbours."""
RECALL_SAMPLE = 1000
"""Query rows on which the approximate backend's recall is measured against exact search."""
DEFAULT_EXACT_BUDGET_S = 600.0
"""The estimated exact-search time above which "auto" goes approximate (resolve_backend)."""
CPU_FLOPS_PER_CORE = 1.5e10
"""Measured rate of the CPU exact search in the units of resolve_backend's cost 3 N^2 d: faiss at
N = 1e5, d = 64, k = 45 took 62.7 s on 2 shared cores, 3e10 * 64 / 62.7 / 2 = 1.5e10 per core
(2.4e10 at N = 2e4 while the machine was quieter)."""
GPU_FLOPS = 1e13
"""Assumed KeOps rate on one GPU (not measured here; the README's 10 TFLOP/s effective)."""
_FAISS_BLOCK = 1 << 16
"""Rows converted to float32 and handed to faiss at a time (adds and default query blocks)."""
_FAISS_DATABASE_BS = 16384
"""faiss's database block of its brute-force BLAS search (its default 1024). Measured at N = 2e4,
d = 64, k = 45 on 2 cores: 1.6 s against 2.8 s, now as fast as the matrix product alone."""


@dataclass(frozen=True)
class KnnReport:
    """What a k-NN search did: ``backend`` that ran ("auto" resolved) and ``reason`` it was
    chosen; for an approximate backend, ``recall`` = recall@k measured on the point ids
    ``sampled`` (see knn), else None."""

    backend: str
    reason: str
    recall: float | None = None
    sampled: np.ndarray | None = None


def _check_input(X, k: int) -> np.ndarray | torch.Tensor:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer (number of neighbours), got k={k!r}")
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ValueError(f"X must be a 2-D array [N, d], got shape {shape}")
    if isinstance(X, torch.Tensor):
        finite = bool(torch.isfinite(X).all())
    else:  # by row blocks: a memory-mapped X larger than memory must not get a mask of its size
        step = max(1, (1 << 24) // max(1, shape[1]))
        finite = all(np.isfinite(X[a:a + step]).all() for a in range(0, shape[0], step))
    if not finite:
        raise ValueError("X contains NaN or inf values; drop or impute those rows before building the k-NN graph")
    if shape[0] <= k:
        raise ValueError(f"need more points than neighbours: N={shape[0]} <= k={k}; lower k or add points")
    return X


def _cuda(device: str | torch.device | None) -> bool:
    return torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()


def resolve_backend(backend: Backend = "auto", device: str | torch.device | None = None,
                    shape: tuple[int, int] | None = None, *,
                    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S) -> str:
    """The backend "auto" stands for with X of ``shape`` [N, d] (see _choose for the reason)."""
    return _choose(backend, device, shape, exact_budget_s)[0]


def _choose(backend: str, device, shape: tuple[int, int] | None, exact_budget_s: float) -> tuple[str, str]:
    """(backend, why). "auto" estimates the exact search's time as t = 3 N^2 d / rate (a
    difference, a square and a sum per pair and coordinate; rate = GPU_FLOPS on a CUDA device,
    else CPU_FLOPS_PER_CORE x the cores this process may use) and takes

    - the exact backend when t <= exact_budget_s (or the shape is unknown): "keops" on CUDA
      (design.md: KeOps is the fast exact k-NN on GPU; not measured here), else "faiss", the
      fastest exact CPU search (bench_knn.py, 2 shared cores, d = 64, k = 45: N = 1e5 faiss
      62.7 s, sklearn 89.6 s; another run faiss 55 s, sklearn 76 s, torch 100 s; N = 1e4 faiss
      1.7 s, sklearn 1.9 s);
    - "faiss_ivf" otherwise: at the measured rate from N ~ 3.1e5 at d = 64 on 2 cores with the
      default 600 s. Below that it does not pay: at N = 1e5 it took 75 s against faiss's 63 s.

    The rule depends on N, d and the machine only, so every rank of a DDP run takes the same one.
    """
    if backend != "auto":
        if backend not in EXACT_BACKENDS + APPROXIMATE_BACKENDS:
            raise ValueError(f"unknown k-NN backend {backend!r}; use one of "
                             f"{', '.join(map(repr, ('auto', *EXACT_BACKENDS, *APPROXIMATE_BACKENDS)))}")
        return backend, "as asked"
    cuda = _cuda(device)
    exact = "keops" if cuda else "faiss"
    if shape is None:
        return exact, "the exact search (size unknown)"
    n, d = shape
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rate = GPU_FLOPS if cuda else CPU_FLOPS_PER_CORE * cores
    seconds = 3.0 * n * n * d / rate
    estimate = (f"exact search of N={n}, d={d} estimated at {seconds:.3g} s (3 N^2 d flops at {rate:.2g} flop/s, "
                f"{'one GPU' if cuda else f'{cores} CPU cores'})")
    if seconds <= exact_budget_s:
        return exact, f"{estimate} <= exact_budget_s={exact_budget_s:g}"
    return "faiss_ivf", f"{estimate} > exact_budget_s={exact_budget_s:g}, so approximate"


def _drop_self(idx: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """From k+1 candidates per row drop the row's own id (row i is point ids[i]; or, with
    duplicates that push it out, the farthest candidate)."""
    n = idx.shape[0]
    is_self = idx == ids[:, None]
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


def _sklearn_search(X: np.ndarray, k: int):
    """(a, b) -> the k+1 candidates of rows a..b-1, by scikit-learn's brute-force search."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", n_jobs=-1).fit(X)
    return lambda a, b: nn.kneighbors(X[a:b], return_distance=False).astype(np.int64)


@contextmanager
def _faiss_blocks():
    """faiss with its BLAS database block at _FAISS_DATABASE_BS (a process-wide setting), restored after."""
    import faiss

    bs = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = _FAISS_DATABASE_BS
    try:
        yield faiss
    finally:
        faiss.cvar.distance_compute_blas_database_bs = bs


def _faiss_add(index, X: np.ndarray):
    for a in range(0, X.shape[0], _FAISS_BLOCK):
        index.add(np.ascontiguousarray(X[a:a + _FAISS_BLOCK], dtype=np.float32))
    return index


def _faiss_search(index, X: np.ndarray, k: int, ids: np.ndarray, chunk: int) -> np.ndarray:
    """The k+1 candidates of the points ``ids`` (int64 [n, k+1]), queried ``chunk`` rows at a time
    so that only one block's float32 copy and distances exist besides the output."""
    out = np.empty((len(ids), k + 1), np.int64)
    for a in range(0, len(ids), chunk):
        q = ids[a:a + chunk]
        # a contiguous block is a view; a sample of rows is gathered
        rows = X[q[0]:q[-1] + 1] if q[-1] - q[0] + 1 == len(q) else X[q]
        out[a:a + len(q)] = index.search(np.ascontiguousarray(rows, dtype=np.float32), k + 1)[1]
    if (out < 0).any():  # faiss pads with -1 when it finds fewer than k+1 points
        raise ValueError(f"faiss found fewer than k+1={k + 1} candidates for {int((out < 0).any(1).sum())} query "
                         "rows (the cells it scanned hold fewer points); raise nprobe or use an exact backend")
    return out


def _faiss_flat(faiss, X: np.ndarray, device):
    """IndexFlatL2 of X's rows, on the CUDA device when faiss has GPU support, else on the CPU."""
    index = faiss.IndexFlatL2(X.shape[1])
    if _cuda(device) and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        dev = torch.device(device) if device is not None else torch.device("cuda")
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, torch.cuda.current_device() if dev.index is None else dev.index, index)
        index.referenced_objects = [res]  # the resources must outlive the index (faiss's own idiom)
    return _faiss_add(index, X)


def check_recall(recall: float, min_recall: float, *, k: int, queries: int, backend: str, nprobe: int) -> None:
    """Raise ValueError when an approximate search's measured recall@k is below ``min_recall``."""
    if recall < min_recall:
        raise ValueError(f"k-NN {backend} found recall@{k} = {recall:.3f} on {queries} sampled queries, below "
                         f"min_recall={min_recall:g}: raise nprobe (now {nprobe}; the search's time grows about "
                         "linearly with it), use an exact backend ('faiss', 'sklearn', 'keops'; with backend "
                         "'auto', a larger exact_budget_s), or lower min_recall")


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """recall@k = mean_i #{j : found[i, j] <= truth[i, k-1]} / k over the sampled rows, from exact
    distances (a found neighbour at the true k-th distance counts, so ties cannot lower it); NaN
    with no rows (an empty block of query rows), which check_recall lets pass."""
    return float(np.mean(found <= truth[:, -1:])) if found.size else float("nan")


def _exact_order(Xd: torch.Tensor, ids: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates -> (indices, distances) [n, k]: self dropped, distances recomputed exactly in
    float64 from the coordinates, ascending (the search's expanded-square distances are only
    used for ranking), ties by index."""
    idx = _drop_self(cand, k, ids)
    dist = np.empty(idx.shape, np.float64)
    step = max(1, (1 << 24) // (k * Xd.shape[1]))
    it, qt = torch.from_numpy(idx), torch.from_numpy(ids)
    for a in range(0, len(ids), step):
        b = min(a + step, len(ids))
        diff = Xd[qt[a:b], None, :].double() - Xd[it[a:b]].double()
        dist[a:b] = torch.linalg.vector_norm(diff, dim=-1).numpy()
    # re-sort by the exact distance (the expanded form can swap near-ties), ties by index
    order = np.lexsort((idx, dist), axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)


def _ivf_index(faiss, X: np.ndarray, Xd: torch.Tensor, k: int, ids: np.ndarray, chunk: int, nprobe: int,
               min_recall: float, verbose: bool):
    """The IVF index of X's rows at ``nprobe``, after the recall check on a sample of the query
    points ``ids`` (knn): (index, recall, sampled)."""
    n, d = X.shape
    nlist = max(1, min(round(IVF_LISTS_PER_SQRT_N * np.sqrt(n)), n // IVF_TRAIN_PER_LIST))
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
    sampled = np.sort(rng.choice(ids, size=min(len(ids), RECALL_SAMPLE), replace=False))
    # the index keeps its quantizer alive (faiss's wrapper); k-means is seeded, so every run
    # and every rank builds the same cells
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.train(np.ascontiguousarray(X[train], dtype=np.float32))
    _faiss_add(index, X)
    # the exact truth: the same index scanning every cell, with no second copy of X
    index.nprobe = nlist
    truth = _faiss_search(index, X, k, sampled, chunk)
    index.nprobe = nprobe
    found = _faiss_search(index, X, k, sampled, chunk)
    recall = _recall(_exact_order(Xd, sampled, found, k)[1], _exact_order(Xd, sampled, truth, k)[1])
    if verbose:
        print(f"lit-susc: k-NN: faiss_ivf, recall@{k} = {recall:.3f} on {len(sampled)} sampled queries "
              f"(nprobe={nprobe} of {nlist} cells)", flush=True)
    check_recall(recall, min_recall, k=k, queries=len(sampled), backend="faiss_ivf", nprobe=nprobe)
    return index, recall, sampled


def knn(
    X: np.ndarray | torch.Tensor,
    k: int,
    backend: Backend = "auto",
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    rows: slice | None = None,
    nprobe: int = DEFAULT_NPROBE,
    min_recall: float = DEFAULT_MIN_RECALL,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    return_report: bool = False,
    verbose: bool = True,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, KnnReport]:
    """The k nearest neighbours of every row of X [N, d], the point itself excluded.

    Returns (indices [N, k] int64, distances [N, k] float64), ascending by distance, where
    distances[i, j] = ||X[i] - X[indices[i, j]]||_2 recomputed exactly from the coordinates
    (the search's expanded-square distances are only used for ranking); with return_report,
    also a KnnReport. "auto" prints which backend it chose and why (resolve_backend).

    rows: a contiguous slice of query rows (default all). Only those rows are searched, against
    all N points; the arrays returned have one row per query, row i being point rows.start + i,
    and equal knn(X, k)[0][rows], knn(X, k)[1][rows] (each query row's arithmetic is the same
    whatever the blocking, and faiss_ivf builds the same index every time; the cluster stage
    splits the queries across ranks this way).

    faiss, faiss_ivf: rank in float32 (faiss's precision), so near-ties closer than that may
    order differently from a float64 backend. faiss_ivf first measures its recall@k =
    mean_i #{found j with d_ij <= d_i(k)} / k over min(rows, RECALL_SAMPLE) query rows drawn with
    seed 0, d_i(k) the exact k-th distance (the index scanning all its cells for those rows),
    prints it, and raises ValueError (check_recall) if it is below min_recall (0 disables the
    check) before searching the rest. nprobe: the cells it scans per query.

    out: two arrays [rows, k] (indices: any integer dtype that holds N; distances: float) to fill
    and return instead of new int64 and float64 ones, e.g. memory-mapped files
    (``rundir.write_memmap``). The queries are searched, ordered and stored a block at a time,
    so besides X and the outputs memory holds one block.

    chunk_size: query rows per block (torch: default keeps a block of the N x N distance
    matrix at ~2^26 entries; keops: default 2^20 rows, so the output block on the device
    stays O(chunk k); faiss, sklearn: default 2^16). device: torch device for "torch"/"keops", and
    where "faiss" runs (default: CUDA if available).
    """
    from ..config import check_number

    X = _check_input(X, k)
    check_number("nprobe", nprobe, low=1, integer=True)
    check_number("min_recall", min_recall, low=0)
    if min_recall > 1:
        raise ValueError(f"min_recall must be a finite number <= 1, got {min_recall!r}")
    check_number("exact_budget_s", exact_budget_s, low=0)
    name, reason = _choose(backend, device, tuple(X.shape), exact_budget_s)
    if verbose and backend == "auto":
        print(f"lit-susc: k-NN: auto -> {name}: {reason}", flush=True)
    start, stop = _rows(rows, X.shape[0])
    if out is None:
        out = (np.empty((stop - start, k), np.int64), np.empty((stop - start, k), np.float64))
    elif any(a.shape != (stop - start, k) for a in out):
        raise ValueError(f"out must be two [{stop - start}, {k}] arrays (indices, distances), got shapes "
                         f"{[a.shape for a in out]}")
    recall = sampled = None
    with ExitStack() as stack:
        if name in ("sklearn", "faiss", "faiss_ivf"):
            Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X
            Xd = _shared_tensor(Xn)
            block = chunk_size or _FAISS_BLOCK
            if name == "sklearn":
                search = _sklearn_search(Xn, k)
            else:
                faiss = stack.enter_context(_faiss_blocks())
                if name == "faiss":
                    index = _faiss_flat(faiss, Xn, device)
                else:
                    index, recall, sampled = _ivf_index(faiss, Xn, Xd, k, np.arange(start, stop), block, nprobe,
                                                        min_recall, verbose)
                search = lambda a, b: _faiss_search(index, Xn, k, np.arange(a, b), block)
        else:
            dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                               else "cpu")
            Xt = (_shared_tensor(X) if isinstance(X, np.ndarray) else X).to(dev)
            if not Xt.is_floating_point():
                Xt = Xt.double()
            Xt = Xt.contiguous()
            if name == "torch":
                chunk = chunk_size or _default_chunk(Xt.shape[0])
                block = max(chunk, _FAISS_BLOCK // chunk * chunk)
                search = lambda a, b: _knn_torch(Xt, k, chunk, a, b)
            else:
                block = chunk_size or (1 << 20)
                search = lambda a, b: _knn_keops(Xt, k, block, a, b)
            Xd = Xt.cpu()
        # queries in blocks, each ordered exactly and stored at once: memory is the outputs plus one block
        for a in range(start, stop, block):
            b = min(a + block, stop)
            out[0][a - start:b - start], out[1][a - start:b - start] = _exact_order(Xd, np.arange(a, b), search(a, b),
                                                                                      k)
    if return_report:
        return out[0], out[1], KnnReport(name, reason, recall, sampled)
    return out[0], out[1]


def _shared_tensor(X: np.ndarray) -> torch.Tensor:
    """X as a tensor sharing its memory, a read-only memory-mapped file included (torch warns that it
    cannot protect such an array from writes; nothing here writes to X)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(X)


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
    nprobe: int = DEFAULT_NPROBE,
    min_recall: float = DEFAULT_MIN_RECALL,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
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
    (degree 0); the push and sweep treat such nodes consistently. The search's arguments are
    knn's.
    """
    X = _check_input(X, k)
    check_kernel(kernel, k, local_scale_neighbor, sigma)
    idx, dist = knn(X, k, backend, chunk_size=chunk_size, device=device, nprobe=nprobe, min_recall=min_recall,
                    exact_budget_s=exact_budget_s)
    return graph_from_knn(idx, dist, kernel=kernel, local_scale_neighbor=local_scale_neighbor, sigma=sigma)


def check_kernel(kernel: str, k: int, local_scale_neighbor: int, sigma: float | None) -> bool:
    """Raise ValueError for an unknown kernel or a scale neighbour outside [1, k]; whether the kernel
    needs the points' scales (kernel_scales)."""
    if kernel not in ("gaussian_local", "gaussian", "unweighted"):
        raise ValueError(f"unknown kernel {kernel!r}; use 'gaussian_local', 'gaussian' or 'unweighted'")
    needs_scales = kernel == "gaussian_local" or (kernel == "gaussian" and sigma is None)
    if needs_scales and not 1 <= local_scale_neighbor <= k:
        raise ValueError(f"local_scale_neighbor must lie in [1, k={k}], got {local_scale_neighbor}")
    return needs_scales


def kernel_scales(dist: np.ndarray, kernel: str, local_scale_neighbor: int = LOCAL_SCALE_NEIGHBOR,
                  sigma: float | None = None) -> tuple[np.ndarray | None, float | None]:
    """(s [N] float64 for "gaussian_local", else None; sigma for "gaussian", else None): knn_graph's
    scales from the distances dist [N, k] (s_i = the local_scale_neighbor-th distance, floored at
    max(1e-12 median_i s_i, the smallest normal float64); sigma given, or median_i s_i)."""
    if kernel == "unweighted":
        return None, None
    if kernel == "gaussian" and sigma is not None:
        sig = float(sigma)
    else:
        s = np.asarray(dist[:, local_scale_neighbor - 1], np.float64)
        if kernel == "gaussian_local":
            # duplicates make s_i = 0; a floor keeps 0/0 from appearing (such pairs get w = 1)
            floor = max(float(np.median(s)) * 1e-12, np.finfo(np.float64).tiny)
            return np.maximum(s, floor), None
        sig = float(np.median(s))
    if not sig > 0:
        raise ValueError(f"the Gaussian scale must be positive, got sigma={sig}; pass sigma explicitly")
    return None, sig


def edge_weights(rows: np.ndarray, idx: np.ndarray, dist: np.ndarray, kernel: str, s: np.ndarray | None,
                 sigma: float | None) -> np.ndarray:
    """w_i->j float64 (knn_graph's kernels) of the pairs i = rows, j = idx at distances dist (arrays that
    broadcast: rows [B, 1] with idx, dist [B, k], or three flat arrays); s, sigma: ``kernel_scales``.
    graph_from_knn and graph.build_graph both weigh their edges with it."""
    if kernel == "unweighted":
        return np.ones(np.shape(dist))
    if kernel == "gaussian_local":
        return np.exp(-(dist * dist) / (s[rows] * s[idx]))
    return np.exp(-(dist * dist) / (sigma * sigma))


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
    check_kernel(kernel, k, local_scale_neighbor, sigma)
    s, sig = kernel_scales(dist, kernel, local_scale_neighbor, sigma)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.ravel()
    w = edge_weights(rows, cols, dist.ravel(), kernel, s, sig)
    A = sp.coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    # self is never among the neighbours (_drop_self), so there is no diagonal to clear
    A = A.maximum(A.T).tocsr()
    A.eliminate_zeros()
    A.sort_indices()
    return A
