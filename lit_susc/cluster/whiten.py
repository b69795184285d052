"""PCA whitening of the susceptibility matrix before clustering (spec, "Clustering").

Distances on raw susceptibilities are dominated by the first few PCs; whitening rescales every
principal direction to unit variance so each counts equally:

    mu = mean_i x_i,  C = (X - mu)^T (X - mu) / (N - 1) = V diag(lambda) V^T,
    Z = (X - mu) V_m diag(lambda_m)^-1/2,   m = {j : lambda_j > min_variance_ratio * lambda_max},

with the moments, the PCA (its sign convention) and the default ratio of lit_susc.statistics
(``MIN_VARIANCE_RATIO``: the PCs at or below it are dropped).

mode="standardize" is the older practice: Z_ij = (x_ij - mu_j) / sigma_j, then each row minus
its own mean (no rotation; zero-variance columns are left at 0).

Whitening gives every kept PC unit variance, so a PC that is mostly sampling noise weighs as much
in the distances as one that is mostly signal. With the noise of chi known (m_j = mean over tokens
of chi_se[j]^2; components are sampled independently, so their noise is uncorrelated) and the
covariance C of the ground-truth chi, the reliability of a direction v is

    reliability(v) = max(0, 1 - sum_j v_j^2 m_j / v^T C v)

(for the run's own PCs v^T C v = lambda; ``lit_susc.covariance.direction_reliability``), and the
cluster stage's ``min_pc_reliability`` removes the whitened PCs below a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..statistics import MIN_VARIANCE_RATIO, Moments, column_covariance, principal_components, rank, whiten_scores

__all__ = ["WhitenInfo", "whiten"]


@dataclass
class WhitenInfo:
    """What whiten() fitted: enough to apply the same map to new rows (transform)."""

    mode: str
    mean: np.ndarray  # [d]
    components: np.ndarray | None  # [m, d], rows = kept PCs, descending variance ("whiten")
    variances: np.ndarray | None  # [m] variance of each kept PC ("whiten")
    scale: np.ndarray | None = None  # [d] column std ("standardize")

    def keep(self, mask: np.ndarray) -> WhitenInfo:
        """The same map restricted to the PCs where ``mask`` is True."""
        return WhitenInfo(self.mode, self.mean, self.components[mask], self.variances[mask], self.scale)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64) - self.mean
        if self.mode == "whiten":
            return whiten_scores(X @ self.components.T, self.variances)
        Z = X / self.scale
        return Z - Z.mean(axis=1, keepdims=True)


def _as_numpy(X) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array [N, d], got shape {X.shape}")
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to estimate variances, got {X.shape[0]}")
    return X


def whiten(
    X: np.ndarray | torch.Tensor,
    *,
    min_variance_ratio: float = MIN_VARIANCE_RATIO,
    mode: Literal["whiten", "standardize"] = "whiten",
    chunk_size: int = 1 << 16,
) -> tuple[np.ndarray, WhitenInfo]:
    """Whiten (default) or standardise the rows of X [N, d] (module docstring for formulas).

    Statistics are accumulated in float64 over row chunks, so X itself is never copied to
    float64 at once. Z is float32 when X is float32, else float64. Raises ValueError for
    NaN/inf or a matrix with no variance.
    """
    if mode not in ("whiten", "standardize"):
        raise ValueError(f"unknown mode {mode!r}; use 'whiten' or 'standardize'")
    X = _as_numpy(X)
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf values; drop or impute those rows before whitening")
    out_dtype = np.float32 if X.dtype == np.float32 else np.float64
    n, d = X.shape
    chunks = [X[a : a + chunk_size] for a in range(0, n, chunk_size)]  # views
    moments = Moments()
    for chunk in chunks:
        moments.update(chunk)
    mean = moments.mean()
    cov = column_covariance(chunks, mean)
    if mode == "standardize":
        scale = np.sqrt(np.diag(cov)).copy()
        scale[scale == 0] = np.inf  # constant columns map to 0 rather than NaN
        info = WhitenInfo(mode, mean, None, None, scale)
    else:
        lam, components = principal_components(cov)
        kept = rank(lam, min_variance_ratio)
        if kept == 0:
            raise ValueError("X has zero variance; nothing to whiten")
        info = WhitenInfo(mode, mean, components[:kept], lam[:kept].copy())
    width = info.components.shape[0] if mode == "whiten" else d
    Z = np.empty((n, width), out_dtype)
    for a, chunk in zip(range(0, n, chunk_size), chunks):
        Z[a : a + chunk_size] = info.transform(chunk)
    return Z, info

