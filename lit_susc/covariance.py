"""Streaming covariances of a scalar observable with per-token losses, and the estimators.

At draw s of a chain restricted to component C (design.md section 2):

    phi_s = L_ref(w_s) - L_ref(w*)           (component loss on the reference batch)
    d_s[t] = l_t(w_s) - L_ref(w_s)           (centred per-token loss of observation token t)

Only sums are kept, in float64: S, sum phi, sum phi^2, sum d[t], sum phi*d[t]; they add across
draws, chains and ranks. From them, pooled over all S draws of all chains of C:

    seed convention (the spec's estimator, the default):
        chi[t] = nbeta/S * sum_s (phi_s - mean phi)(d_s[t] - mean d[t])
               = nbeta * (sum phi*d[t] / S - (sum phi / S)(sum d[t] / S))
    baker convention (Baker et al. 2025, devinterp 2.0.1):
        chi[t] = -Cov(phi, d[t]) = -(seed value) / nbeta

and the per-chain learning coefficient lambda = nbeta * mean_s phi_s.

The Bayesian influence function (design.md section 2) is a cross-covariance of two loss vectors,
a[i] = l_i(w_s) (training samples) and b[q] = l_q(w_s) (queries), kept the same way:

    sums: S, sum a[i], sum b[q], sum a[i] b[q]
    BIF(z_i, q) = -Cov(l_i, l_q) = -(sum a[i] b[q] / S - (sum a[i] / S)(sum b[q] / S))

Covariances do not change when a constant is added to a or b, so callers may subtract the
losses at w* first: the sums then stay small and the float64 subtraction loses no digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CONVENTIONS = ("seed", "baker")


class StreamingSums:
    """float64 sums over draws that add across draws, chains and ranks: state / merge / from_state."""

    state_names: tuple[str, ...] = ()

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.state_names}

    def merge(self, other: StreamingSums) -> None:
        for name, value in other.state().items():
            getattr(self, name).add_(value.to(getattr(self, name).device))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]):
        return cls(**{k: v.to(torch.float64) for k, v in state.items()})


def _zeros(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


@dataclass
class CovarianceSums(StreamingSums):
    """Sufficient statistics of (phi, d[t]) over draws; state / update / merge / compute."""

    state_names = ("count", "sum_phi", "sum_phi_sq", "sum_d", "sum_phi_d")

    count: Tensor  # float64 scalar: number of draws S
    sum_phi: Tensor  # float64 scalar
    sum_phi_sq: Tensor  # float64 scalar
    sum_d: Tensor  # float64 [T]
    sum_phi_d: Tensor  # float64 [T]

    @classmethod
    def zeros(cls, n_tokens: int, device: torch.device | str = "cpu") -> CovarianceSums:
        return cls(_zeros(device=device), _zeros(device=device), _zeros(device=device),
                   _zeros(n_tokens, device=device), _zeros(n_tokens, device=device))

    def update(self, phi: Tensor, d: Tensor) -> None:
        """Fold one draw: phi a scalar, d the [T] centred per-token losses."""
        phi = phi.to(torch.float64)
        self.count += 1
        self.sum_phi += phi
        self.sum_phi_sq += phi * phi
        self.sum_d += d.to(torch.float64)
        self.sum_phi_d.add_(d.to(torch.float64) * phi)

    def covariance(self) -> Tensor:
        """Cov(phi, d[t]) with the 1/S (population) normalisation of the spec's estimator."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 draws, got {int(self.count)}")
        s = self.count
        return self.sum_phi_d / s - (self.sum_phi / s) * (self.sum_d / s)

    def phi_variance(self) -> Tensor:
        s = self.count
        return self.sum_phi_sq / s - (self.sum_phi / s) ** 2


def susceptibility(sums: CovarianceSums, nbeta: float, convention: str = "seed") -> Tensor:
    """chi[t] in the given convention (module docstring)."""
    if convention == "seed":
        return nbeta * sums.covariance()
    if convention == "baker":
        return -sums.covariance()
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def learning_coefficient(mean_phi: float, nbeta: float) -> float:
    """lambda = nbeta * (mean over draws of L_ref(w_s) - L_ref(w*))."""
    return nbeta * mean_phi


@dataclass
class CrossCovarianceSums(StreamingSums):
    """Sufficient statistics of two loss vectors a [A] and b [B] over draws (module docstring)."""

    state_names = ("count", "sum_a", "sum_b", "sum_ab")

    count: Tensor  # float64 scalar: number of draws S
    sum_a: Tensor  # float64 [A]
    sum_b: Tensor  # float64 [B]
    sum_ab: Tensor  # float64 [A, B]

    @classmethod
    def zeros(cls, n_a: int, n_b: int, device: torch.device | str = "cpu") -> CrossCovarianceSums:
        return cls(_zeros(device=device), _zeros(n_a, device=device), _zeros(n_b, device=device),
                   _zeros(n_a, n_b, device=device))

    def update(self, a: Tensor, b: Tensor) -> None:
        """Fold one draw: a [A] and b [B] losses at the same weights."""
        a, b = a.to(torch.float64), b.to(torch.float64)
        self.count += 1
        self.sum_a += a
        self.sum_b += b
        self.sum_ab.addr_(a, b)

    def covariance(self) -> Tensor:
        """Cov(a[i], b[q]) [A, B] with the 1/S normalisation, like ``CovarianceSums.covariance``."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 draws, got {int(self.count)}")
        s = self.count
        return self.sum_ab / s - torch.outer(self.sum_a / s, self.sum_b / s)


def bayesian_influence(sums: CrossCovarianceSums) -> Tensor:
    """BIF(z_i, q) = -Cov(l_i, l_q) [train, query] over the draws (design.md section 2).

    Negative: upweighting z_i lowers the query's expected loss (z_i helps q); positive: it raises it.
    """
    return -sums.covariance()
