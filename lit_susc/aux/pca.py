"""The PC basis of chi that the aux model predicts in, fitted on the training split only.

Rows x are tokens' susceptibility vectors (one entry per component). With s = 1 (centred) or
s_j = the column standard deviation (``standardize``; columns of zero spread keep s_j = 1):

    mu = mean_i x_i,   u = (x - mu) / s,   C = sum_i u_i u_i^T / (N - 1) = V diag(lambda) V^T
    pcs(x) = u V_K                      (the K leading eigenvectors, descending lambda)
    x      = (pcs V_K^T) * s + mu       (exact when K = number of components)
    whitened = pcs / sqrt(lambda_K)     (unit variance on the training split; the clustering basis)

Each eigenvector's sign is fixed so that its largest-magnitude entry is positive. Saved as
safetensors (float64): mean, scale, components [K, n_components], variances [K].

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
from safetensors.torch import load_file
from torch import Tensor

from ..covariance import direction_reliability
from ..rundir import write_safetensors

# A kept PC whose variance is below this fraction of the first one carries no signal to learn.
_MIN_VARIANCE_RATIO = 1e-12


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
        return pcs / self.variances.to(pcs).sqrt()

    def save(self, path: str | Path) -> None:
        write_safetensors(path, {"mean": self.mean, "scale": self.scale, "components": self.components,
                                 "variances": self.variances})

    @classmethod
    def load(cls, path: str | Path) -> PCABasis:
        return cls(**load_file(str(path)))


def pc_reliability(pca: PCABasis, mean_se_sq: Tensor) -> Tensor:
    """reliability_k [K] from m_j = mean_i chi_se[j, i]^2 [n_components] (module docstring)."""
    return direction_reliability(pca.components / pca.scale, mean_se_sq, pca.variances)


def fit_pca(chunks: Callable[[], Iterable[Tensor]], config: TargetConfig) -> PCABasis:
    """Fit the basis on the rows that ``chunks()`` yields ([n, n_components] each), in two passes.

    Raises:
        ValueError: on non-finite values, fewer than 2 rows, more PCs asked than components, or a
            kept PC without variance (the rows span fewer dimensions than the PCs asked).
    """
    n, total, total_sq = 0, None, None
    for chunk in chunks():
        chunk = chunk.double()
        if not torch.isfinite(chunk).all():
            raise ValueError("chi holds NaN or inf values; re-run or repair the susceptibility run before fitting "
                             "an aux model on it")
        total = chunk.sum(0) if total is None else total + chunk.sum(0)
        total_sq = chunk.square().sum(0) if total_sq is None else total_sq + chunk.square().sum(0)
        n += chunk.shape[0]
    if n < 2:
        raise ValueError(f"the training split holds {n} tokens; fitting a PCA needs at least 2")
    n_components = total.shape[0]
    n_pcs = n_components if config.n_pcs is None else config.n_pcs
    if not 1 <= n_pcs <= n_components:
        raise ValueError(f"targets.n_pcs={config.n_pcs} asked, but chi has {n_components} components; "
                         f"use 1..{n_components} (or null for all)")
    mean = total / n
    scale = torch.ones_like(mean)
    if config.standardize:
        std = ((total_sq - n * mean.square()).clamp_min(0) / (n - 1)).sqrt()
        scale = torch.where(std > 0, std, scale)
    cov = torch.zeros(n_components, n_components, dtype=torch.float64)
    for chunk in chunks():
        u = (chunk.double() - mean) / scale
        cov += u.T @ u
    variances, vectors = torch.linalg.eigh(cov / (n - 1))
    variances, vectors = variances.flip(0)[:n_pcs], vectors.flip(1)[:, :n_pcs].T.contiguous()
    if variances[-1] <= _MIN_VARIANCE_RATIO * variances[0]:
        rank = int((variances > _MIN_VARIANCE_RATIO * variances[0]).sum())
        raise ValueError(f"the training split's chi spans only {rank} dimensions, fewer than the {n_pcs} PCs asked; "
                         f"set targets.n_pcs <= {rank} or use more tokens")
    peak = vectors.abs().argmax(dim=1)
    vectors *= vectors.gather(1, peak[:, None]).sign()
    return PCABasis(mean=mean, scale=scale, components=vectors, variances=variances)
