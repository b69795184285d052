"""chi[component, token] and its standard error from streaming covariance sums (lit_susc.covariance)."""

from __future__ import annotations

import torch

from lit_susc.covariance import CovarianceSums, default_block, reliability, susceptibility, susceptibility_se

from .streaming import ComponentSumsCallback


class SusceptibilityCallback(ComponentSumsCallback):
    """Folds every draw into float64 sums (with batch-means moments); never stores a draw.

    After fitting, ``chi`` and ``chi_se`` hold [n_components, n_tokens] float64 tensors in the
    run's ``sgld.convention`` (``seed``: nbeta * Cov(phi, l - L_n); ``baker``: -Cov(phi, l - L_n)).
    The losses are folded relative to their values at w* (d_s - d* = (l_s - l*) - phi_s), which
    leaves every covariance unchanged and keeps the second moments of the SE free of cancellation.
    """

    state_name = "susceptibility"

    def __init__(self) -> None:
        super().__init__()
        self.chi: torch.Tensor | None = None
        self.chi_se: torch.Tensor | None = None

    def empty_sums(self, pl_module) -> CovarianceSums:
        sgld = pl_module.sgld
        block = sgld.se_block or default_block(sgld.draws)
        return CovarianceSums.zeros(int(torch.Size(pl_module.observation_shape).numel()), pl_module.device, block)

    def fold(self, sums: CovarianceSums, draw: dict, pl_module) -> None:
        # phi_C is the observable's change (lit_susc.observables); L_n's change centres the losses
        sums.update(draw["observed"], draw["obs_losses"].double() - pl_module.observation_losses_star - draw["phi"])

    def summarize(self, sums: CovarianceSums, pl_module) -> dict[str, torch.Tensor]:
        sgld = pl_module.sgld
        return {"chi": susceptibility(sums, sgld.nbeta, sgld.convention),
                "chi_se": susceptibility_se(sums, sgld.nbeta, sgld.convention)}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # With a reliability target every epoch is one round: the sampler decides who goes on.
        if pl_module.sgld.target_reliability is not None:
            results = self.reduce(trainer, pl_module)
            pl_module.finish_round({name: reliability(results["chi"][i], results["chi_se"][i])
                                    for i, name in enumerate(pl_module.component_names)})

    def finish(self, pl_module) -> None:
        self.chi, self.chi_se = self.results["chi"], self.results["chi_se"]
