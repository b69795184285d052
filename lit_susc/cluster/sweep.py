"""Sweep cut: the prefix of lowest conductance in the order p(u)/d(u) descending.

For S a prefix of that order,

    Phi(S) = cut(S) / min(vol S, vol G - vol S),
    vol S = sum_{u in S} d(u)        (self-loops count: d(u) is the full row sum),
    cut(S) = sum_{u in S, v not in S} w_uv   (self-loops never cross the cut),

computed incrementally: adding u changes cut by d(u) - w_uu - 2 w(u, S). Ties in p(u)/d(u)
are broken by node id, so the order is deterministic. Phi is +inf where the denominator is 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit

from .appr import graph_arrays
from .graph import Graph

__all__ = ["sweep_cut", "sweep_profile"]


@njit(cache=True, nogil=True)
def _sweep_order(nodes, p, deg):
    """nodes sorted by p/d descending, ties by id ascending. Isolated nodes (d = 0) go first."""
    nodes = np.sort(nodes)
    key = np.empty(nodes.shape[0], np.float64)
    for i in range(nodes.shape[0]):
        u = nodes[i]
        key[i] = -(p[u] / deg[u]) if deg[u] > 0.0 else -np.inf
    return nodes[np.argsort(key, kind="mergesort")]


@njit(cache=True, nogil=True)
def _sweep_scan(indptr, indices, data, deg, vol_g, order, inset, phi):
    """phi[i] = Phi(order[:i+1]). inset is a clean bool workspace (left clean on return)."""
    cut = 0.0
    vol = 0.0
    for i in range(order.shape[0]):
        u = order[i]
        to_set = 0.0
        self_w = 0.0
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if v == u:
                self_w += data[e]
            elif inset[v]:
                to_set += data[e]
        inset[u] = True
        cut += deg[u] - self_w - 2.0 * to_set
        vol += deg[u]
        den = min(vol, vol_g - vol)
        # cut of the whole component can round to a tiny negative number
        phi[i] = max(cut, 0.0) / den if den > 0.0 else np.inf
    for i in range(order.shape[0]):
        inset[order[i]] = False


@njit(cache=True, nogil=True)
def _best_prefix(phi, min_size, max_size):
    """Length of the prefix with the lowest Phi among lengths in [min_size, max_size]
    (shortest on ties); 0 if none is finite."""
    best = 0
    best_phi = np.inf
    hi = min(max_size, phi.shape[0])
    for length in range(max(min_size, 1), hi + 1):
        if phi[length - 1] < best_phi:
            best_phi = phi[length - 1]
            best = length
    return best, best_phi


@njit(cache=True, nogil=True)
def _sweep_nodes(indptr, indices, data, deg, vol_g, nodes, p, min_size, max_size, inset):
    """Best prefix (members, Phi) of `nodes` in sweep order; prefixes longer than max_size are
    ineligible, so they are never scanned."""
    order = _sweep_order(nodes, p, deg)
    head = order[: min(max_size, order.shape[0])]
    phi = np.empty(head.shape[0], np.float64)
    _sweep_scan(indptr, indices, data, deg, vol_g, head, inset, phi)
    best, best_phi = _best_prefix(phi, min_size, max_size)
    return head[:best].copy(), best_phi


def _prepare(A, p):
    indptr, indices, data, deg = graph_arrays(A)
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.shape[0] != deg.shape[0]:
        raise ValueError(f"p has length {p.shape[0]} but the graph has {deg.shape[0]} nodes")
    return indptr, indices, data, deg, p


def sweep_profile(A: sp.spmatrix | sp.sparray | Graph, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, phi): the support of p (p > 0) in sweep order and Phi of every prefix,
    phi[i] = Phi(order[:i+1])."""
    indptr, indices, data, deg, p = _prepare(A, p)
    order = _sweep_order(np.flatnonzero(p > 0).astype(np.int64), p, deg)
    phi = np.empty(order.shape[0], np.float64)
    _sweep_scan(indptr, indices, data, deg, deg.sum(), order, np.zeros(deg.shape[0], np.bool_), phi)
    return order, phi


def sweep_cut(
    A: sp.spmatrix | sp.sparray | Graph,
    p: np.ndarray,
    *,
    min_size: int = 1,
    max_fraction: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Lowest-conductance sweep prefix of p (dense, length N) on the graph A (scipy CSR, or a
    ``Graph``: appr.graph_arrays).

    Only prefixes with min_size <= |S| <= max_fraction * N are eligible. Returns
    (members in sweep order, Phi(members)); (empty array, inf) when no prefix is eligible.
    """
    indptr, indices, data, deg, p = _prepare(A, p)
    max_size = int(np.floor(max_fraction * p.shape[0]))
    members, best_phi = _sweep_nodes(indptr, indices, data, deg, deg.sum(), np.flatnonzero(p > 0).astype(np.int64),
                                     p, int(min_size), max_size, np.zeros(deg.shape[0], np.bool_))
    return members, float(best_phi)
