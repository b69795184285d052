"""Jaccard-kNN: how much two representations of the same tokens agree on each token's neighbours.

For representations X [N, p] and Y [N, q] and N_k^X(t) the k nearest neighbours of token t in X
(Euclidean, t itself excluded; ``lit_susc.cluster.knn.knn``):

    J_t = |N_k^X(t) & N_k^Y(t)| / |N_k^X(t) | N_k^Y(t)|,     Jaccard-kNN(X, Y) = mean_t J_t

J_t = 1 when both neighbour sets agree, 0 when they are disjoint. For independent
representations the two sets are independent uniform k-subsets of the N - 1 other tokens, so
the overlap I is hypergeometric (N - 1 items, k marked, k drawn), E[I] = k^2 / (N - 1) and
mean_t J_t ~ E[I / (2k - I)] ~ k / (2 (N - 1) - k): the floor a real overlap is judged against.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cluster.knn import Backend, knn

__all__ = ["knn_jaccard", "knn_jaccard_per_token", "neighbour_jaccard"]

_ROWS_PER_CHUNK = 1 << 16


def neighbour_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Jaccard index |a_i & b_i| / |a_i | b_i| of two neighbour lists a [N, k_a], b [N, k_b].

    Each row lists distinct ids (as ``knn`` returns them), so the intersection is the number of
    ids that appear twice in the row of [a | b], and |a_i | b_i| = k_a + k_b - |a_i & b_i|.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"neighbour lists must be [N, k] arrays of the same N, got shapes {a.shape} and {b.shape}")
    if a.shape[1] + b.shape[1] == 0:
        raise ValueError("both neighbour lists are empty (k = 0); the Jaccard index is undefined")
    out = np.empty(a.shape[0], np.float64)
    for s in range(0, a.shape[0], _ROWS_PER_CHUNK):
        both = np.sort(np.concatenate([a[s:s + _ROWS_PER_CHUNK], b[s:s + _ROWS_PER_CHUNK]], axis=1), axis=1)
        inter = (both[:, 1:] == both[:, :-1]).sum(axis=1)
        out[s:s + _ROWS_PER_CHUNK] = inter / (a.shape[1] + b.shape[1] - inter)
    return out


def _check_pair(X, Y, k: int) -> None:
    shapes = tuple(np.shape(X)), tuple(np.shape(Y))
    for name, shape in zip("XY", shapes):
        if len(shape) != 2:
            raise ValueError(f"{name} must be a 2-D array [tokens, features], got shape {shape}")
    if shapes[0][0] != shapes[1][0]:
        raise ValueError(f"X and Y must describe the same tokens: X has N={shapes[0][0]} rows, Y has "
                         f"N={shapes[1][0]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (number of neighbours), got k={k!r}")
    if shapes[0][0] <= k:
        raise ValueError(f"Jaccard-kNN needs more tokens than neighbours: N={shapes[0][0]} <= k={k}; lower k or "
                         "use more tokens")


def knn_jaccard_per_token(X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor, k: int = 50,
                          backend: Backend = "auto", device: str | torch.device | None = None) -> np.ndarray:
    """J_t for every token t (module docstring): [N] float64, neighbours from ``knn(., k, backend)``.

    Raises:
        ValueError: if X and Y have different N, N <= k, k < 1, or a value is NaN or inf.
    """
    _check_pair(X, Y, k)
    return neighbour_jaccard(knn(X, k, backend, device=device)[0], knn(Y, k, backend, device=device)[0])


def knn_jaccard(X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor, k: int = 50, backend: Backend = "auto",
                device: str | torch.device | None = None) -> float:
    """Jaccard-kNN(X, Y) = mean_t |N_k^X(t) & N_k^Y(t)| / |N_k^X(t) | N_k^Y(t)|, each token itself excluded.

    Raises:
        ValueError: if X and Y have different N, N <= k, k < 1, or a value is NaN or inf.
    """
    return float(knn_jaccard_per_token(X, Y, k, backend, device).mean())
