"""The PC basis of chi that the aux model predicts in, fitted on the training split only.

Rows x are tokens' susceptibility vectors (one entry per component). With s = 1 (centred) or
s_j = the column standard deviation (``standardize``; columns of zero spread keep s_j = 1):

    mu = mean_i x_i,   u = (x - mu) / s,   C = sum_i u_i u_i^T / (N - 1) = V diag(lambda) V^T
    pcs(x) = u V_K                      (the K leading eigenvectors, descending lambda)
    x      = (pcs V_K^T) * s + mu       (exact when K = number of components)
    whitened = pcs / sqrt(lambda_K)     (unit variance on the training split; the clustering basis)

The moments, the PCA (each eigenvector signed so that its largest-magnitude entry is positive)
and the whitening come from lit_susc.statistics; a fit refuses K PCs when fewer than K have a
variance above ``statistics.MIN_VARIANCE_RATIO`` times the first's (with ``n_pcs: null``, "every
PC", it keeps those that do). Saved as safetensors
(float64): mean, scale, components [K, n_components], variances [K].

Reliability of each PC (how much of its variance is signal rather than sampling noise). The chains
of different components are independent, so the noise of token i's PC-k score is a sum over
components, and with m_j = mean over tokens of chi_se[j, i]^2,

    noise_k = sum_j (V_jk / s_j)^2 m_j,     reliability_k = max(0, 1 - noise_k / lambda_k)

and the best Pearson any predictor of PC k can reach on such targets (its noise ceiling) is
sqrt(reliability_k).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..covariance import direction_reliability
from ..rundir import read_safetensors, stage_remedy, write_safetensors
from ..statistics import MIN_VARIANCE_RATIO, Moments, column_covariance, principal_components, rank, whiten_scores


@dataclass
class TargetConfig:
    """How chi becomes the aux model's regression targets."""

    n_pcs: int | None = None
    """Principal components kept as targets (None: as many as chi has components)."""
    standardize: bool = False
    """Divide every chi column by its training-split standard deviation before the PCA."""
    whiten: bool = True
    """Train on whitened PCs, so that every PC weighs the same in the MSE (and in the mean per-PC
    Pearson it is judged by); False: on PC scores in units of the first PC's standard deviation,
    where the leading PCs dominate the loss (the first PC alone holds most of chi's variance)."""


@dataclass
class PCABasis:
    """A fitted PC basis of chi (module docstring for the formulas)."""

    mean: Tensor
    """mu, [n_components], float64."""
    scale: Tensor
    """s, [n_components], float64 (ones unless standardized)."""
    components: Tensor
    """V_K^T, [K, n_components], float64, orthonormal rows in descending variance."""
    variances: Tensor
    """lambda_K, [K], float64: each PC's variance on the training split."""

    @property
    def n_pcs(self) -> int:
        return self.components.shape[0]

    def to_pcs(self, chi: Tensor) -> Tensor:
        """[N, n_components] -> [N, K]: pcs = ((x - mu) / s) V_K."""
        return ((chi - self.mean.to(chi)) / self.scale.to(chi)) @ self.components.to(chi).T

    def to_components(self, pcs: Tensor) -> Tensor:
        """[N, K] -> [N, n_components]: x = (pcs V_K^T) * s + mu."""
        return (pcs @ self.components.to(pcs)) * self.scale.to(pcs) + self.mean.to(pcs)

    def whiten(self, pcs: Tensor) -> Tensor:
        """[N, K] -> [N, K]: pcs / sqrt(lambda)."""
        return whiten_scores(pcs, self.variances.to(pcs))

    def save(self, path: str | Path) -> None:
        write_safetensors(path, {"mean": self.mean, "scale": self.scale, "components": self.components,
                                 "variances": self.variances})

    @classmethod
    def load(cls, path: str | Path, remedy: str | None = None) -> PCABasis:
        """The basis ``save`` wrote, verified; ``remedy`` says what to do when it is corrupt (default: the
        remedy of a stage's output, as a basis is in an aux fit's or an aux prediction's directory)."""
        path = Path(path)
        return cls(**read_safetensors(path, stage_remedy(path.parent) if remedy is None else remedy))


def pc_reliability(pca: PCABasis, mean_se_sq: Tensor) -> Tensor:
    """reliability_k [K] from m_j = mean_i chi_se[j, i]^2 [n_components] (module docstring)."""
    return direction_reliability(pca.components / pca.scale, mean_se_sq, pca.variances)


def fit_pca(chunks: Callable[[], Iterable[Tensor]], config: TargetConfig) -> PCABasis:
    """Fit the basis on the rows that ``chunks()`` yields ([n, n_components] each), in two passes.

    Raises:
        ValueError: on non-finite values, fewer than 2 rows, more PCs asked than components, or a
            kept PC without variance (the rows span fewer dimensions than the PCs asked).
    """
    moments = Moments()
    for chunk in chunks():
        chunk = chunk.double()
        if not torch.isfinite(chunk).all():
            raise ValueError("chi holds NaN or inf values; re-run or repair the susceptibility run before fitting "
                             "an aux model on it")
        moments.update(chunk)
    n = moments.count
    if n < 2:
        raise ValueError(f"the training split holds {n} tokens; fitting a PCA needs at least 2")
    n_components = moments.total.shape[0]
    n_pcs = n_components if config.n_pcs is None else config.n_pcs
    if not 1 <= n_pcs <= n_components:
        raise ValueError(f"targets.n_pcs={config.n_pcs} asked, but chi has {n_components} components; "
                         f"use 1..{n_components} (or null for all)")
    mean = moments.mean()
    scale = moments.scale() if config.standardize else torch.ones_like(mean)
    variances, vectors = principal_components(column_covariance(chunks(), mean, scale))
    spanned = rank(variances)
    if config.n_pcs is None and spanned < n_pcs:
        # "every PC": those the rows span; the rest are rounding noise that no model can learn
        print(f"lit-susc: chi spans {spanned} of its {n_components} dimensions (PCs with a variance above "
              f"{MIN_VARIANCE_RATIO:g} times the first's); the aux model predicts those {spanned} PCs")
        n_pcs = spanned
    if spanned < n_pcs:
        raise ValueError(f"the training split's chi spans only {spanned} dimensions (PCs with a variance above "
                         f"{MIN_VARIANCE_RATIO:g} times the first's), fewer than the {n_pcs} PCs asked; set "
                         f"targets.n_pcs <= {spanned} or use more tokens")
    return PCABasis(mean=mean, scale=scale, components=vectors[:n_pcs].clone(), variances=variances[:n_pcs].clone())
