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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CONVENTIONS = ("seed", "baker")


@dataclass
class CovarianceSums:
    """Sufficient statistics of (phi, d[t]) over draws; state / update / merge / compute."""

    count: Tensor  # float64 scalar: number of draws S
    sum_phi: Tensor  # float64 scalar
    sum_phi_sq: Tensor  # float64 scalar
    sum_d: Tensor  # float64 [T]
    sum_phi_d: Tensor  # float64 [T]

    @classmethod
    def zeros(cls, n_tokens: int, device: torch.device | str = "cpu") -> CovarianceSums:
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z(), z(n_tokens), z(n_tokens))

    def update(self, phi: Tensor, d: Tensor) -> None:
        """Fold one draw: phi a scalar, d the [T] centred per-token losses."""
        phi = phi.to(torch.float64)
        self.count += 1
        self.sum_phi += phi
        self.sum_phi_sq += phi * phi
        self.sum_d += d.to(torch.float64)
        self.sum_phi_d.add_(d.to(torch.float64) * phi)

    def merge(self, other: CovarianceSums) -> None:
        for name, value in other.state().items():
            getattr(self, name).add_(value.to(getattr(self, name).device))

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in ("count", "sum_phi", "sum_phi_sq", "sum_d", "sum_phi_d")}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> CovarianceSums:
        return cls(**{k: v.to(torch.float64) for k, v in state.items()})

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
