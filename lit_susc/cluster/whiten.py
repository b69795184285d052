"""PCA whitening of the susceptibility matrix before clustering (spec, "Clustering").

Distances on raw susceptibilities are dominated by the first few PCs; whitening rescales every
principal direction to unit variance so each counts equally:

    mu = mean_i x_i,  C = (X - mu)^T (X - mu) / (N - 1) = V diag(lambda) V^T,
    Z = (X - mu) V_m diag(lambda_m)^-1/2,   m = {j : lambda_j > min_variance_ratio * lambda_max},

with the moments, the PCA (its sign convention) and the default ratio of lit_susc.statistics
(``MIN_VARIANCE_RATIO``: the PCs at or below it are dropped).

mode="standardize" is the older practice: Z_ij = (x_ij - mu_j) / sigma_j, then each row minus
its own mean (no rotation; zero-variance columns are left at 0).

Rows too many to hold (``whiten_to_file``): the same fit from row blocks read again for each
pass (``fit_whitening``: the moments, then the covariance; across DDP ranks through an
all-reduce), then Z written block by block to a memory-mapped .npy file (``write_whitened``).

Whitening gives every kept PC unit variance, so a PC that is mostly sampling noise weighs as much
in the distances as one that is mostly signal. With the noise of chi known (m_j = mean over tokens
of chi_se[j]^2; components are sampled independently, so their noise is uncorrelated) and the
covariance C of the ground-truth chi, the reliability of a direction v is

    reliability(v) = max(0, 1 - sum_j v_j^2 m_j / v^T C v)

(for the run's own PCs v^T C v = lambda; ``lit_susc.covariance.direction_reliability``), and the
cluster stage's ``min_pc_reliability`` removes the whitened PCs below a threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..rundir import write_memmap
from ..statistics import MIN_VARIANCE_RATIO, Moments, column_covariance, principal_components, rank, whiten_scores

__all__ = ["WhitenInfo", "fit_whitening", "whiten", "whiten_to_file", "write_whitened"]

Blocks = Callable[[], Iterable[np.ndarray | torch.Tensor]]
"""Called once per pass; each call yields the same row blocks [n_i, d] in the same order."""
Reduce = Callable[[np.ndarray], np.ndarray]
"""The sum of a float64 array over the ranks, on every rank (an all-reduce)."""


@dataclass
class WhitenInfo:
    """What whiten() fitted: enough to apply the same map to new rows (transform)."""

    mode: str  # "whiten", "standardize", or "none" (the identity: rows as they are)
    mean: np.ndarray  # [d]
    components: np.ndarray | None  # [m, d], rows = kept PCs, descending variance ("whiten")
    variances: np.ndarray | None  # [m] variance of each kept PC ("whiten")
    scale: np.ndarray | None = None  # [d] column std ("standardize")

    @property
    def width(self) -> int:
        """Columns of the map's output: m kept PCs ("whiten") or d ("standardize", "none")."""
        return self.components.shape[0] if self.mode == "whiten" else self.mean.shape[0]

    def keep(self, mask: np.ndarray) -> WhitenInfo:
        """The same map restricted to the PCs where ``mask`` is True."""
        return WhitenInfo(self.mode, self.mean, self.components[mask], self.variances[mask], self.scale)

    @classmethod
    def identity(cls, d: int) -> WhitenInfo:
        """The map that leaves rows of d columns as they are (the cluster stage's preprocessing 'none')."""
        return cls("none", np.zeros(d), None, None)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.mode == "none":
            return np.asarray(X, dtype=np.float64)
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
    return X


def _checked(blocks: Iterable) -> Iterator[np.ndarray]:
    """The blocks as numpy arrays, refusing NaN and inf (the statistics would be NaN)."""
    start = 0
    for block in blocks:
        x = _as_numpy(block)
        if not np.isfinite(x).all():
            raise ValueError(f"X contains NaN or inf values (in rows {start}..{start + len(x) - 1}); drop or impute "
                             "those rows before whitening")
        start += len(x)
        yield x


def fit_whitening(
    blocks: Blocks,
    *,
    mode: Literal["whiten", "standardize"] = "whiten",
    min_variance_ratio: float = MIN_VARIANCE_RATIO,
    reduce: Reduce | None = None,
) -> tuple[WhitenInfo, int]:
    """The map of the module docstring fitted on the rows that ``blocks()`` yields, in two passes.

    Pass 1, the mean: ``Moments`` about a centre c, the first row (with ``reduce``: the mean of the
    ranks' first rows, so that every rank sums about the same c); pass 2, the covariance about that
    mean (``column_covariance``), both in float64. Two passes rather than one shifted sum of
    products, C = (sum (x - c)(x - c)^T - n m m^T) / (n - 1): that difference cancels digits,
    an error of ~eps |c - mean|^2 ~ eps d lambda_1 in C, which is 1e-9 of a PC kept at
    min_variance_ratio = 1e-6; about the mean the error is eps lambda_1 and the fit is the
    in-memory whiten()'s. The input is read twice (three times with the write); memory is
    O(block d + d^2).

    reduce: sums an array over the DDP ranks (all-reduce), each rank's ``blocks`` yielding its own
    share of the rows (every share at least 2 rows): the counts, sums and covariance are summed
    before the PCA, so every rank gets the same map, equal to the one-process fit up to the
    order of the sums.

    Returns (the map, the number of rows this process's blocks hold). Raises ValueError for
    NaN/inf, fewer than 2 rows or a matrix with no variance.
    """
    if mode not in ("whiten", "standardize"):
        raise ValueError(f"unknown mode {mode!r}; use 'whiten' or 'standardize'")
    rows = _checked(blocks())
    first = next((x for x in rows if len(x)), None)
    if first is None:
        raise ValueError("need at least 2 rows to estimate variances, got 0")
    center = first[0].astype(np.float64)
    if reduce is not None:
        total = reduce(np.r_[1.0, center])
        center = total[1:] / total[0]
    moments = Moments(center=center).update(first)
    for x in rows:
        moments.update(x)
    n_local = moments.count
    if reduce is not None:
        d = center.shape[0]
        total = reduce(np.r_[float(moments.count), moments.total, moments.total_sq])
        moments = Moments(round(float(total[0])), total[1:d + 1], total[d + 1:], center)
    if moments.count < 2:
        raise ValueError(f"need at least 2 rows to estimate variances, got {moments.count}")
    mean = moments.mean()
    cov = column_covariance(map(_as_numpy, blocks()), mean)
    if reduce is not None:  # column_covariance divides the local sum by n_local - 1
        cov = reduce(cov * (n_local - 1)) / (moments.count - 1)
    if mode == "standardize":
        scale = np.sqrt(np.diag(cov)).copy()
        scale[scale == 0] = np.inf  # constant columns map to 0 rather than NaN
        return WhitenInfo(mode, mean, None, None, scale), n_local
    lam, components = principal_components(cov)
    kept = rank(lam, min_variance_ratio)
    if kept == 0:
        raise ValueError("X has zero variance; nothing to whiten")
    return WhitenInfo(mode, mean, components[:kept], lam[:kept].copy()), n_local


def write_whitened(blocks: Blocks, info: WhitenInfo, path: str | Path, rows: int, dtype=np.float32) -> Path:
    """Z = info.transform(X) of the ``rows`` rows ``blocks()`` yields, written once, block by block,
    to the .npy file ``path`` [rows, info.width] (``rundir.write_memmap``: atomic, with its sha256).
    Rows are transformed in float64 and rounded to ``dtype`` as they are stored."""
    with write_memmap(path, dtype, (rows, info.width)) as Z:
        at = 0
        for block in blocks():
            x = _as_numpy(block)
            if at + len(x) > rows:
                raise ValueError(f"the blocks hold more than the {rows} rows the statistics counted")
            Z[at:at + len(x)] = info.transform(x)
            at += len(x)
        if at != rows:
            raise ValueError(f"the blocks hold {at} rows, not the {rows} the statistics counted")
    return Path(path)


def whiten_to_file(
    blocks: Blocks,
    path: str | Path,
    *,
    mode: Literal["whiten", "standardize"] = "whiten",
    min_variance_ratio: float = MIN_VARIANCE_RATIO,
    reduce: Reduce | None = None,
    dtype=np.float32,
) -> tuple[WhitenInfo, Path]:
    """whiten() of rows too many to hold: ``fit_whitening`` (two passes over ``blocks()``), then
    ``write_whitened`` (a third) to the memory-mapped .npy ``path``. Returns (the map, ``path``).

    Equals whiten(X) of the stacked blocks to rounding (1e-10 relative in float64); the file holds
    that result rounded to ``dtype``. With ``reduce`` the statistics are every rank's and the file
    holds this rank's rows. Peak memory O(block d + d^2) besides the blocks themselves, e.g.
    ``lambda: (read_chi(run, a, min(a + B, N)).T.numpy() for a in range(0, N, B))``.
    """
    info, rows = fit_whitening(blocks, mode=mode, min_variance_ratio=min_variance_ratio, reduce=reduce)
    return info, write_whitened(blocks, info, path, rows, dtype)


def whiten(
    X: np.ndarray | torch.Tensor,
    *,
    min_variance_ratio: float = MIN_VARIANCE_RATIO,
    mode: Literal["whiten", "standardize"] = "whiten",
    chunk_size: int = 1 << 16,
) -> tuple[np.ndarray, WhitenInfo]:
    """Whiten (default) or standardise the rows of X [N, d] (module docstring for formulas).

    Statistics are accumulated in float64 over row chunks (``fit_whitening``), so X itself is
    never copied to float64 at once. Z is float32 when X is float32, else float64. Raises
    ValueError for NaN/inf, fewer than 2 rows or a matrix with no variance.
    """
    X = _as_numpy(X)
    chunks = [X[a:a + chunk_size] for a in range(0, X.shape[0], chunk_size)]  # views
    info, n = fit_whitening(lambda: chunks, mode=mode, min_variance_ratio=min_variance_ratio)
    Z = np.empty((n, info.width), np.float32 if X.dtype == np.float32 else np.float64)
    for a, chunk in zip(range(0, n, chunk_size), chunks):
        Z[a:a + chunk_size] = info.transform(chunk)
    return Z, info
