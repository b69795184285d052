"""Per-component local learning coefficients: lambda = nbeta * mean_s (L_ref(w_s) - L_ref(w*))."""

from __future__ import annotations

import lightning as L
import torch

from lit_susc.covariance import learning_coefficient
from lit_susc.unit_state import load_unit_tensors, reduce_sum, save_unit_tensors


class LLCCallback(L.Callback):
    """Per chain and mean/std over chains (std with Bessel's correction; 0 for one chain).

    After fitting, ``llc`` maps component name -> {"mean", "std", "per_chain"}; with the whole
    model as the component this is the model's LLC.
    """

    state_name = "llc"

    def __init__(self) -> None:
        self._phis: dict[int, list[float]] = {}  # by unit index: phi at each draw so far (rounds: units of one chain)
        self.llc: dict[str, dict] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for chain in outputs["chains"]:
            unit = chain["unit"]
            if chain["step"] == 0:
                self._phis[unit.index] = []
            if chain["draw"] is not None:
                self._phis[unit.index].append(float(chain["draw"]["phi"]))
            if chain["unit_done"]:
                phis = torch.tensor(self._phis.pop(unit.index), dtype=torch.float64)
                save_unit_tensors(pl_module.unit_dir(unit), self.state_name,
                                  {"sum_phi": phis.sum(), "count": torch.tensor(float(len(phis)), dtype=torch.float64)})

    def on_train_end(self, trainer, pl_module) -> None:
        chains = pl_module.sgld.chains
        sums = torch.zeros(2, len(pl_module.component_names), chains, dtype=torch.float64, device=pl_module.device)
        for unit in pl_module.owned_units():  # a chain's rounds add up
            state = load_unit_tensors(pl_module.unit_dir(unit), self.state_name, pl_module.device)
            sums[0, unit.component_index, unit.chain] += state["sum_phi"]
            sums[1, unit.component_index, unit.chain] += state["count"]
        sums = reduce_sum(trainer, sums).cpu()
        mean_phi = sums[0] / sums[1]
        nbeta = pl_module.sgld.nbeta
        self.llc = {}
        for i, name in enumerate(pl_module.component_names):
            per_chain = [learning_coefficient(float(m), nbeta) for m in mean_phi[i]]
            values = torch.tensor(per_chain, dtype=torch.float64)
            std = float(values.std()) if chains > 1 else 0.0
            self.llc[name] = {"mean": float(values.mean()), "std": std, "per_chain": per_chain}
