"""The statistics the stages share: streaming moments, PCA and whitening, and chi's conventions.

Every function takes numpy arrays or torch tensors and computes in the library it is given: the
cluster stage works in numpy and the aux stage in torch, and the two libraries' sums, matrix
products and eigensolvers round differently, so converting would change their results.

Streaming moments (``Moments``), in float64. Rows x_i [d] arrive in chunks; about a centre c
(0 unless asked for):

    n,   S1 = sum_i (x_i - c),   S2 = sum_i (x_i - c)^2                        (per column)
    mean = c + m,   var = (S2 - n m^2) / (n - ddof),   m = S1 / n

The sums add across chunks and ranks. Raw sums (c = 0) merge with a plain all-reduce; a centre
near the mean (``center="first"``: the first row seen) keeps S2 - n m^2 free of cancellation when
a column's mean is far larger than its spread (the shifted-data algorithm; Chan, Golub and
LeVeque 1983).

The covariance is a second pass, about the mean of the first (``column_covariance``):

    C = sum_i u_i u_i^T / (N - 1),   u_i = (x_i - mean) / s        (s = 1, or per-column scales)

PCA of a covariance (``principal_components``): C = V diag(lambda) V^T, the PCs (columns of V) in
descending lambda, each signed so that its largest-magnitude entry is positive (the first such
entry on a tie): eigensolvers return either sign, and LAPACK builds differ in which.

Whitening divides the score along each PC by sqrt(lambda) (``whiten_scores``), so every kept PC
gets unit variance. The one threshold: a PC whose variance is at most ``MIN_VARIANCE_RATIO``
times the largest counts as absent,

    rank = #{j : lambda_j > MIN_VARIANCE_RATIO * lambda_1}                     (``rank``)

Such a direction's standard deviation is at most 1/1000 of the first PC's, and whitening would
scale it up to the first PC's weight (in k-NN distances, in the aux model's loss); sampling noise
in chi (chi_se) is normally far larger than that. Exact rank deficiency (a copied column, fewer
tokens than components) leaves eigenvalues at rounding level, about 1e-16 d lambda_1, far below
the threshold. Whitening keeps the first ``rank`` PCs (the cluster stage, whose
``min_variance_ratio`` overrides the ratio and records it with each clustering); a fit that has
to deliver K PCs, the aux model's targets, refuses K > rank.

chi conventions. Both are multiples of the covariance the sampler measures,
chi = k Cov(phi_C, l_xy - L_n) (lit_susc.covariance):

    seed  (the spec's estimator, the default):  k = nbeta
    baker (Baker et al. 2025, devinterp 2.0.1): k = -1

so chi in ``target`` is chi in ``source`` times k_target / k_source (baker = -seed / nbeta), and
its standard error times |k_target / k_source|.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

Array = np.ndarray | torch.Tensor

MIN_VARIANCE_RATIO = 1e-6
"""PCs with variance at most this fraction of the largest are absent (module docstring, ``rank``)."""

Convention = Literal["seed", "baker"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)
DESCRIPTIONS = {
    "seed": "chi = nbeta * Cov(phi_C, l_xy - L_n) (the spec's estimator, 'seed' convention)",
    "baker": "chi = -Cov(phi_C, l_xy - L_n) (Baker et al. 2025 / devinterp, 'baker' convention)",
}
"""How each convention's chi is defined, as run directories record it."""


def _lib(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def _float64(x: Array) -> Array:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) else np.asarray(x).astype(np.float64, copy=False)


def _copy(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else x.copy()


def _zeros(like: Array, *shape: int) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.zeros(shape, dtype=torch.float64, device=like.device)
    return np.zeros(shape)


@dataclass
class Moments:
    """Per-column count, sums and sums of squares of rows about a centre (module docstring).

    ``update`` folds a chunk [n, d] (cast to float64), ``merge`` another state, and ``mean``,
    ``var``, ``std``, ``scale`` compute from the sums. ``center``: None (c = 0), ``"first"``
    (the first row seen) or a [d] array.
    """

    count: int = 0
    total: Array | None = None
    """S1 [d]."""
    total_sq: Array | None = None
    """S2 [d]."""
    center: Array | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.center, str) and self.center != "first":
            raise ValueError(f"center must be None, 'first' or an array, got {self.center!r}")

    def update(self, chunk: Array) -> Moments:
        x = _float64(chunk)
        if isinstance(self.center, str):
            if not len(x):  # no first row yet
                return self
            self.center = _copy(x[0])
        if self.center is not None:
            x = x - self.center
        if self.total is None:
            self.total, self.total_sq = _zeros(x, x.shape[1]), _zeros(x, x.shape[1])
        self.total += x.sum(0)
        self.total_sq += _lib(x).square(x).sum(0)
        self.count += x.shape[0]
        return self

    def merge(self, other: Moments) -> Moments:
        """Add another state's sums; both must be about the same centre (sums about different
        centres do not add)."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.total, self.total_sq = other.count, _copy(other.total), _copy(other.total_sq)
            self.center = other.center if other.center is None else _copy(other.center)
            return self
        same = (self.center is None and other.center is None) or (
            self.center is not None and other.center is not None and bool((self.center == other.center).all()))
        if not same:
            raise ValueError("these moments are about different centres; merge states that share one (or None)")
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count
        return self

    def _centred_mean(self) -> Array:
        if self.count == 0:
            raise ValueError("no rows: the moments of nothing are undefined")
        return self.total / self.count

    def mean(self) -> Array:
        """c + S1 / n [d]."""
        m = self._centred_mean()
        return m if self.center is None else self.center + m

    def var(self, ddof: int = 1) -> Array:
        """(S2 - n m^2) / (n - ddof) [d], m = S1 / n, floored at 0 (rounding can take it below);
        NaN (0 / 0) with n <= ddof."""
        m = self._centred_mean()
        lib = _lib(m)
        return lib.clip(self.total_sq - self.count * lib.square(m), 0, None) / (self.count - ddof)

    def std(self, ddof: int = 1) -> Array:
        """sqrt(var) [d]."""
        return _lib(self.total).sqrt(self.var(ddof))

    def scale(self, ddof: int = 1) -> Array:
        """s [d]: the std, 1 where a column has no spread (or n <= ddof), so that (x - mean) / s
        has unit variance in every column that varies and leaves the others as they are."""
        s = self.std(ddof)
        return _lib(s).where(s > 0, s, 1.0)


def column_covariance(chunks: Iterable[Array], mean: Array, scale: Array | None = None) -> Array:
    """C = sum_i u_i u_i^T / (N - 1) [d, d], u_i = (x_i - mean) / scale (no division when None):
    the second pass over the chunks [n, d] whose ``Moments`` gave ``mean``, in float64."""
    cov, n = None, 0
    for chunk in chunks:
        u = _float64(chunk) - mean
        if scale is not None:
            u = u / scale
        if cov is None:
            cov = _zeros(u, u.shape[1], u.shape[1])
        cov += u.T @ u
        n += u.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 rows, got {n}")
    return cov / (n - 1)


def principal_components(cov: Array) -> tuple[Array, Array]:
    """(lambda [d], V^T [d, d]) with C = V diag(lambda) V^T: rows of V^T are the PCs in descending
    lambda, each signed so that its largest-magnitude entry is positive (module docstring)."""
    lib = _lib(cov)
    variances, vectors = lib.linalg.eigh(cov)
    variances, vectors = lib.flip(variances, (0,)), lib.flip(vectors, (1,)).T
    vectors = vectors.contiguous() if lib is torch else np.ascontiguousarray(vectors)
    peak = lib.abs(vectors).argmax(1)
    return variances, vectors * lib.sign(vectors[lib.arange(len(peak)), peak])[:, None]


def rank(variances: Array, min_variance_ratio: float = MIN_VARIANCE_RATIO) -> int:
    """#{j : lambda_j > min_variance_ratio * lambda_1} for descending ``variances`` (the PCs that
    are there; module docstring); 0 when the largest is not positive."""
    return int((variances > min_variance_ratio * variances[0]).sum())


def whiten_scores(scores: Array, variances: Array) -> Array:
    """scores / sqrt(lambda): PC scores [N, K] at unit variance, lambda [K] their variances."""
    return scores / _lib(variances).sqrt(variances)


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown chi convention {convention!r}; use one of {', '.join(map(repr, CONVENTIONS))}")
    return convention


def convention_coefficient(convention: str, nbeta: float) -> float:
    """k with chi = k Cov(phi_C, l_xy - L_n): nbeta (seed) or -1 (baker)."""
    return nbeta if check_convention(convention) == "seed" else -1


def convert_chi(chi: Array, nbeta: float, source: str, target: str) -> Array:
    """chi in ``target`` from chi in ``source``: chi * k_target / k_source."""
    return chi * (convention_coefficient(target, nbeta) / convention_coefficient(source, nbeta))


def convert_chi_se(chi_se: Array, nbeta: float, source: str, target: str) -> Array:
    """chi's standard error in ``target``: chi_se * |k_target / k_source| (an SE has no sign)."""
    return chi_se * abs(convention_coefficient(target, nbeta) / convention_coefficient(source, nbeta))
