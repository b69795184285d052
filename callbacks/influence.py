"""Bayesian influence functions BIF(z_i, q) = -Cov(l_i, l_q) from streaming sums (lit_susc.covariance)."""

from __future__ import annotations

import torch

from lit_susc.covariance import CrossCovarianceSums, bayesian_influence

from .streaming import ComponentSumsCallback


class BIFCallback(ComponentSumsCallback):
    """Splits each draw's observation losses into training samples (the first ``n_train``) and
    queries (the rest) and keeps their float64 cross-covariance sums; never stores a draw.

    Losses are taken relative to their values at w* (a constant shift: the covariance is the
    same, and the sums stay small). After fitting, ``bif`` is [n_components, n_train, n_query].
    """

    state_name = "bif"

    def __init__(self, n_train: int) -> None:
        super().__init__()
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1 (the number of training-sample losses), got {n_train}")
        self.n_train = n_train
        self.bif: torch.Tensor | None = None

    def empty_sums(self, pl_module) -> CrossCovarianceSums:
        n = int(torch.Size(pl_module.observation_shape).numel())
        if n <= self.n_train:
            raise ValueError(f"the observation data holds {n} losses, but the first {self.n_train} are training "
                             "samples: give at least one query after them")
        return CrossCovarianceSums.zeros(self.n_train, n - self.n_train, pl_module.device)

    def fold(self, sums: CrossCovarianceSums, draw: dict, pl_module) -> None:
        losses = draw["obs_losses"].double() - pl_module.observation_losses_star
        sums.update(losses[:self.n_train], losses[self.n_train:])

    def summarize(self, sums: CrossCovarianceSums, pl_module) -> dict[str, torch.Tensor]:
        return {"bif": bayesian_influence(sums)}

    def finish(self, pl_module) -> None:
        self.bif = self.results["bif"]
