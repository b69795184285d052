"""The symmetric weighted k-NN graph on disk: built from the neighbour arrays in row blocks, read back memory-mapped.

The graph is ``lit_susc.cluster.knn.graph_from_knn``'s. With j_1..j_k the neighbours of i and d_ij their
distances (``knn``: ascending, self excluded), the directed weights are

    w_i->j = exp(-d_ij^2 / (s_i s_j))   "gaussian_local", s_i = max(d(i, its local_scale_neighbor-th), floor),
                                         floor = max(1e-12 median_i s_i, smallest normal float64)
             exp(-d_ij^2 / sigma^2)     "gaussian", sigma given or median_i s_i
             1                           "unweighted"

and A_ij = max(w_i->j, w_j->i) over the directions present (the union of the directed k-NN relations),
without the weights that underflow to 0 in float64. Rows are sorted by column id.

A graph directory::

    indptr.npy    int64 [N + 1]
    indices.npy   int32 [nnz] (int64 where N >= 2^31)
    data.npy      float32 [nnz]: A_ij rounded (rounding is monotonic, so the rounded max is the max of the
                  rounded weights); a weight below float32's range is kept as an edge of weight 0
    degree.npy    float64 [N]: d(u) = sum_v data[u, v], the float32 weights summed in float64 in column
                  order (``row_sums``), so the degrees the push and the sweep use are exactly the
                  stored rows' sums
    graph.json    nodes, edges, kernel and scales; written last: the directory holds a graph exactly
                  when it exists (``rundir.is_finished`` with this marker)

each .npy written atomically with its sha256 sidecar (``rundir.write_memmap``) and verified when opened
(``load_graph``, which maps them read-only: nothing is copied into memory).

``build_graph`` reads the neighbour arrays (in memory or memory-mapped) in row blocks:

  1. c_j = #{i : j in i's list, w_i->j > 0}, the reverse lists' lengths (ids and repeats checked);
  2. the nodes are split into ranges R of consecutive ids whose reverse lists fit the memory left;
  3. for each R: its reverse lists, the pairs (i, w_i->j) of each j in R in ascending i, by a counting
     sort over every block, in memory; then row u of R = the merge of u's own list (sorted by id) with
     its reverse list, a pair in both taking the max: counted, giving indptr;
  4. the same once more, written to indices, data and the degrees (the ranges in reverse order, so the
     last range's reverse lists are used again rather than sorted again).

No N x N matrix and no list of all 2 N k directed pairs is held, and no file is written at random
(pages of a file mapping written at random are written back over and over: a memory-mapped scratch
file of the reverse lists, 3.6 GB at N = 1e7, k = 45, had taken 490 GB of writes when it was
stopped). Working memory stays within ``memory_budget``: O(N) vectors (the scales, the reverse
lists' offsets: ``NODE_BYTES`` per node), the blocks (``ROW_BYTES`` per neighbour of a block row)
and one range's reverse lists (``ENTRY_BYTES`` per pair, 12 with int64 ids). The input is read
2 x (ranges) + 2 times, 4 while its N k pairs fit in about half the budget; the outputs are written
once, in order. The neighbour arrays and the outputs are file-backed pages: they count in RSS while
resident, and the kernel drops (or writes out) them when it needs the memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from numba import njit

from ..rundir import (
    CorruptFileError,
    mark_unfinished,
    read_json,
    reading,
    require_finished,
    write_json,
    write_memmap,
)
from .knn import LOCAL_SCALE_NEIGHBOR, Kernel, check_kernel, edge_weights, kernel_scales

__all__ = ["GRAPH_FILE", "Graph", "build_graph", "check_memory_budget", "load_graph", "row_sums"]

GRAPH_FILE = "graph.json"
"""A graph directory's manifest, written last (its finished marker)."""
DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of working memory ``build_graph`` may use by default, besides file-backed pages."""
NODE_BYTES = 32
"""Working memory per node: the scales (float64), the reverse lists' offsets and fill pointers (int64)."""
ROW_BYTES = 64
"""Working memory per neighbour of a block row: the block's ids, distances and weights (8 bytes each)
and the kernel's float64 temporaries."""
ENTRY_BYTES = 8
"""Working memory per pair of a range's reverse lists: its source (int32) and weight (float32)."""


class Graph(NamedTuple):
    """A symmetric non-negative graph as CSR arrays and its degrees d(u) = row sums: what the push, the
    sweep and cluster_graph run on (``appr.graph_arrays``). From ``load_graph``: read-only memmaps,
    int32 indices and float32 weights; from a scipy matrix: int64 and float64 in memory."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    deg: np.ndarray

    @property
    def n(self) -> int:
        return self.deg.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def to_scipy(self) -> sp.csr_matrix:
        """The same graph as a scipy CSR matrix (its weights as stored)."""
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n, self.n))


@njit(cache=True, nogil=True)
def row_sums(indptr, data):
    """d(u) = sum_e data[e] over row u's entries in stored order, in float64: every graph's degrees
    (so that a memory-mapped graph and the scipy matrix of its weights have the same ones bit for bit)."""
    n = indptr.shape[0] - 1
    deg = np.zeros(n, np.float64)
    for u in range(n):
        total = 0.0
        for e in range(indptr[u], indptr[u + 1]):
            total += data[e]
        deg[u] = total
    return deg


@njit(cache=True, nogil=True)
def _count_reverse(idx, w, counts):
    """counts[j] += #{(i, c) : idx[i, c] = j, w[i, c] > 0}."""
    for i in range(idx.shape[0]):
        for c in range(idx.shape[1]):
            if w[i, c] > 0.0:
                counts[idx[i, c]] += 1


@njit(cache=True, nogil=True)
def _scatter_reverse(sources, targets, w, fill, src, weight):
    """Append (sources[e], w[e]) to the reverse list of targets[e], at fill[targets[e]], for the pairs
    with w > 0 (given by ascending source, so that each list stays sorted by source)."""
    for e in range(sources.shape[0]):
        if w[e] > 0.0:
            j = targets[e]
            at = fill[j]
            src[at] = sources[e]
            weight[at] = np.float32(w[e])
            fill[j] = at + 1


@njit(cache=True, nogil=True)
def _merge_rows(idx, w, rptr, rsrc, rw, offsets, out_idx, out_w, deg, write):
    """Row i: the union of its own list (idx[i], weights w[i] > 0) and its reverse list
    rsrc/rw[rptr[i]:rptr[i+1]], by ascending id, a pair in both taking the max. Returns the rows'
    lengths; with ``write``, also stores them at out_idx/out_w[offsets[i]:] and their sums in deg[i]."""
    rows, k = idx.shape
    counts = np.empty(rows, np.int64)
    for i in range(rows):
        order = np.argsort(idx[i])
        a = 0
        b = rptr[i]
        end = rptr[i + 1]
        n = 0
        total = 0.0
        while True:
            while a < k and not w[i, order[a]] > 0.0:
                a += 1
            if a >= k and b >= end:
                break
            if b >= end or (a < k and idx[i, order[a]] < rsrc[b]):
                v = idx[i, order[a]]
                x = np.float32(w[i, order[a]])
                a += 1
            elif a >= k or rsrc[b] < idx[i, order[a]]:
                v = rsrc[b]
                x = rw[b]
                b += 1
            else:
                v = rsrc[b]
                x = max(np.float32(w[i, order[a]]), rw[b])
                a += 1
                b += 1
            if write:
                out_idx[offsets[i] + n] = v
                out_w[offsets[i] + n] = x
                total += x
            n += 1
        counts[i] = n
        if write:
            deg[i] = total
    return counts


def _check_block(idx: np.ndarray, start: int, n: int) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"idx rows {start}..{start + len(idx) - 1} hold node ids outside [0, {n})")
    ordered = np.sort(idx, axis=1)
    repeats = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if len(repeats):
        raise ValueError(f"row {start + repeats[0]} of idx lists a neighbour twice; the neighbour arrays must come "
                         "from knn (distinct neighbours per row)")


def _split_budget(n: int, k: int, memory_budget: int, entry_bytes: int) -> tuple[int, int]:
    """(rows per block, pairs of reverse lists held at once) within ``memory_budget`` bytes: NODE_BYTES
    per node, then up to half of the rest for the blocks (ROW_BYTES per neighbour of a row), the rest
    for the reverse lists (``entry_bytes`` per pair)."""
    fixed, row = NODE_BYTES * n, (ROW_BYTES + entry_bytes) * k
    if memory_budget < fixed + row:
        raise ValueError(f"memory_budget={memory_budget} bytes cannot hold the graph build's per-node arrays "
                         f"({fixed} bytes for N={n}) and one block row ({row} bytes for k={k}); raise it to at least "
                         f"{fixed + row} bytes (blocks of a few hundred rows run much faster)")
    free = memory_budget - fixed
    rows = max(1, min(n, free // 2 // (ROW_BYTES * k)))
    return rows, (free - rows * ROW_BYTES * k) // entry_bytes


def _ranges(rptr: np.ndarray, capacity: int) -> list[tuple[int, int]]:
    """Consecutive node ranges [r0, r1) covering [0, N) whose reverse lists, rptr[r1] - rptr[r0] pairs,
    fit ``capacity`` (which holds the longest list)."""
    n, out, r0 = rptr.shape[0] - 1, [], 0
    while r0 < n:
        r1 = min(n, max(r0 + 1, int(np.searchsorted(rptr, rptr[r0] + capacity, side="right")) - 1))
        out.append((r0, r1))
        r0 = r1
    return out


def _index_dtype(n: int):
    return np.int32 if n < 2**31 else np.int64


def check_memory_budget(n: int, k: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
    """Raise ValueError when ``build_graph`` of N = n nodes and k neighbours cannot run within
    ``memory_budget`` bytes (its per-node arrays and one block row), before any work is done."""
    _split_budget(n, k, memory_budget, np.dtype(_index_dtype(n)).itemsize + 4)


def build_graph(
    idx: np.ndarray,
    dist: np.ndarray,
    directory: str | Path,
    *,
    kernel: Kernel = "gaussian_local",
    local_scale_neighbor: int = LOCAL_SCALE_NEIGHBOR,
    sigma: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Path:
    """Write graph_from_knn(idx, dist, ...)'s graph to ``directory`` (module docstring) and return it.

    idx, dist: [N, k] as knn returns them (ascending distances, self excluded; any integer and float
    dtypes, e.g. memmaps); read in row blocks. memory_budget: bytes of working memory besides
    file-backed pages; ValueError when it cannot hold the per-node arrays and one block row, or the
    longest reverse list. A graph already in ``directory`` is replaced (its marker goes first, so a
    build that fails leaves no graph).
    """
    if idx.ndim != 2 or idx.shape != dist.shape:
        raise ValueError(f"idx and dist must both be [N, k], got shapes {idx.shape} and {dist.shape}")
    n, k = idx.shape
    check_kernel(kernel, k, local_scale_neighbor, sigma)
    index_dtype = _index_dtype(n)
    entry_bytes = np.dtype(index_dtype).itemsize + 4  # ENTRY_BYTES with int32 ids
    rows, capacity = _split_budget(n, k, memory_budget, entry_bytes)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mark_unfinished(directory, GRAPH_FILE)
    s, sig = kernel_scales(dist, kernel, local_scale_neighbor, sigma)

    def blocks(r0: int = 0, r1: int = n, check: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(a, ids [B, k] int64, w_i->j [B, k]) of the row blocks a..a+B-1 of [r0, r1)."""
        for a in range(r0, r1, rows):
            b = min(a + rows, r1)
            ids = np.asarray(idx[a:b], np.int64)
            if check:
                _check_block(ids, a, n)
            yield a, ids, edge_weights(np.arange(a, b)[:, None], ids, np.asarray(dist[a:b], np.float64), kernel, s,
                                       sig)

    rptr = np.zeros(n + 1, np.int64)
    for _, ids, w in blocks(check=True):
        _count_reverse(ids, w, rptr[1:])
    longest = int(rptr.max())
    if longest > capacity:
        raise ValueError(f"memory_budget={memory_budget} bytes cannot hold the reverse list of node "
                         f"{int(rptr.argmax()) - 1} ({longest} pairs: a hub); raise it by at least "
                         f"{(longest - capacity) * entry_bytes} bytes")
    np.cumsum(rptr, out=rptr)
    ranges = _ranges(rptr, capacity)
    size = max(int(rptr[r1] - rptr[r0]) for r0, r1 in ranges)
    rsrc, rw = np.empty(size, index_dtype), np.empty(size, np.float32)
    held = None

    def reverse_lists(r0: int, r1: int) -> None:
        """rsrc, rw := the reverse lists of the nodes [r0, r1), list j at rptr[j] - rptr[r0]: the pairs
        i -> j in [r0, r1) of every block, counting-sorted by j."""
        nonlocal held
        if held == (r0, r1):
            return
        fill = rptr[r0:r1] - rptr[r0]
        for a in range(0, n, rows):
            ids = np.asarray(idx[a:a + rows], np.int64)
            i, c = np.nonzero((ids >= r0) & (ids < r1))  # by ascending source
            j = ids[i, c]
            w = edge_weights(a + i, j, np.asarray(dist[a:a + rows], np.float64)[i, c], kernel, s, sig)
            _scatter_reverse(a + i, j - r0, w, fill, rsrc, rw)
        held = (r0, r1)

    no_index, no_weight, no_deg = np.empty(0, index_dtype), np.empty(0, np.float32), np.empty(0)
    with ExitStack() as outputs:
        indptr = outputs.enter_context(write_memmap(directory / "indptr.npy", np.int64, (n + 1,)))
        indptr[0] = 0
        for r0, r1 in ranges:
            reverse_lists(r0, r1)
            for a, ids, w in blocks(r0, r1):
                local = rptr[a:a + len(ids) + 1] - rptr[r0]
                indptr[a + 1:a + len(ids) + 1] = _merge_rows(ids, w, local, rsrc, rw, local, no_index, no_weight,
                                                             no_deg, False)
        np.cumsum(indptr, out=indptr)
        nnz = int(indptr[-1])
        indices = outputs.enter_context(write_memmap(directory / "indices.npy", index_dtype, (nnz,)))
        data = outputs.enter_context(write_memmap(directory / "data.npy", np.float32, (nnz,)))
        deg = outputs.enter_context(write_memmap(directory / "degree.npy", np.float64, (n,)))
        for r0, r1 in reversed(ranges):
            reverse_lists(r0, r1)
            for a, ids, w in blocks(r0, r1):
                b = a + len(ids)
                _merge_rows(ids, w, rptr[a:b + 1] - rptr[r0], rsrc, rw, indptr[a:b], indices, data, deg[a:b], True)
    write_json(directory / GRAPH_FILE, {
        "nodes": n, "edges": nnz, "neighbours": k, "kernel": kernel, "local_scale_neighbor": local_scale_neighbor,
        "sigma": sig, "indices_dtype": np.dtype(index_dtype).name,
    })
    return directory


def load_graph(directory: str | Path, remedy: str | None = None) -> Graph:
    """The graph ``build_graph`` wrote to ``directory``, its arrays memory-mapped read-only.

    Each file is verified against its sha256 (``rundir.reading``) and its shape and dtype against
    graph.json. Raises FileNotFoundError when the directory holds no finished graph, and
    CorruptFileError naming the file (and ending in ``remedy``, default: build it again) when a
    file's bytes differ from its checksum or it cannot be read.
    """
    directory = Path(directory)
    remedy = remedy or f"delete {directory} and build the graph again (lit_susc.cluster.graph.build_graph)"
    require_finished(directory, "k-NN graph", "build it with lit_susc.cluster.graph.build_graph", marker=GRAPH_FILE)
    meta = read_json(directory / GRAPH_FILE, remedy)
    n, nnz = meta["nodes"], meta["edges"]
    arrays = []
    for name, dtype, length in (("indptr", np.int64, n + 1), ("indices", np.dtype(meta["indices_dtype"]), nnz),
                                ("data", np.float32, nnz), ("degree", np.float64, n)):
        path = directory / f"{name}.npy"
        with reading(path, remedy) as checked:
            array = np.load(checked, mmap_mode="r")
        if array.dtype != dtype or array.shape != (length,):
            raise CorruptFileError(f"{path} is corrupt: it holds {array.dtype} {array.shape}, where {GRAPH_FILE} "
                                   f"records {np.dtype(dtype).name} ({length},); {remedy}")
        arrays.append(array)
    return Graph(*arrays)
