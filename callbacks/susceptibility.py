"""chi[component, token] from streaming covariance sums (formulas in lit_susc.covariance)."""

from __future__ import annotations

import torch

from lit_susc.covariance import CovarianceSums, susceptibility

from .streaming import ComponentSumsCallback


class SusceptibilityCallback(ComponentSumsCallback):
    """Folds every draw into float64 sums; never stores per-draw per-token losses.

    After fitting, ``chi`` holds the [n_components, n_tokens] float64 estimate in the run's
    ``sgld.convention`` (``seed``: nbeta * Cov(phi, l - L_n); ``baker``: -Cov(phi, l - L_n)),
    and ``sums`` the reduced statistics per component.
    """

    state_name = "susceptibility"

    def __init__(self) -> None:
        super().__init__()
        self.chi: torch.Tensor | None = None

    def empty_sums(self, pl_module) -> CovarianceSums:
        return CovarianceSums.zeros(int(torch.Size(pl_module.observation_shape).numel()), pl_module.device)

    def fold(self, sums: CovarianceSums, draw: dict, pl_module) -> None:
        sums.update(draw["phi"], draw["obs_losses"].double() - draw["ref_loss"])

    def finish(self, pl_module) -> None:
        sgld = pl_module.sgld
        self.chi = torch.stack([susceptibility(s, sgld.nbeta, sgld.convention) for s in self.sums]).cpu()
