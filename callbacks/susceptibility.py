"""chi[component, token] from streaming covariance sums (formulas in lit_susc.covariance)."""

from __future__ import annotations

import lightning as L
import torch

from lit_susc.covariance import CovarianceSums, susceptibility
from lit_susc.unit_state import load_unit_tensors, reduce_sum, save_unit_tensors


class SusceptibilityCallback(L.Callback):
    """Folds every draw into float64 sums; never stores per-draw per-token losses.

    After fitting, ``chi`` holds the [n_components, n_tokens] float64 estimate in the run's
    ``sgld.convention`` (``seed``: nbeta * Cov(phi, l - L_n); ``baker``: -Cov(phi, l - L_n)),
    and ``sums`` the reduced statistics per component.
    """

    state_name = "susceptibility"

    def __init__(self) -> None:
        self._unit_sums: CovarianceSums | None = None
        self.chi: torch.Tensor | None = None
        self.sums: list[CovarianceSums] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        unit = outputs["unit"]
        if unit is None:
            return
        if outputs["step"] == 0:
            self._unit_sums = None
        draw = outputs["draw"]
        if draw is not None:
            if self._unit_sums is None:
                self._unit_sums = CovarianceSums.zeros(draw["obs_losses"].numel(), pl_module.device)
            d = draw["obs_losses"].double() - draw["ref_loss"]
            self._unit_sums.update(draw["phi"], d)
        if outputs["unit_done"]:
            save_unit_tensors(pl_module.unit_dir(unit), self.state_name, self._unit_sums.state())
            self._unit_sums = None

    def on_train_end(self, trainer, pl_module) -> None:
        n_tokens = int(torch.Size(pl_module.observation_shape).numel())
        per_component = [CovarianceSums.zeros(n_tokens, pl_module.device) for _ in pl_module.component_names]
        for unit in pl_module.owned_units():
            state = load_unit_tensors(pl_module.unit_dir(unit), self.state_name, pl_module.device)
            per_component[unit.component_index].merge(CovarianceSums.from_state(state))
        # One collective per statistic, over all components at once.
        stacked = {k: torch.stack([s.state()[k] for s in per_component]) for k in per_component[0].state()}
        stacked = {k: reduce_sum(trainer, v) for k, v in stacked.items()}
        self.sums = [CovarianceSums.from_state({k: v[i] for k, v in stacked.items()})
                     for i in range(len(per_component))]
        sgld = pl_module.sgld
        self.chi = torch.stack([susceptibility(s, sgld.nbeta, sgld.convention) for s in self.sums]).cpu()
