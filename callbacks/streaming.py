"""Per-component streaming sums: folded at every draw, saved per unit, merged and reduced at the end."""

from __future__ import annotations

import lightning as L
import torch

from lit_susc.covariance import StreamingSums
from lit_susc.unit_state import load_unit_tensors, reduce_sum, save_unit_tensors


class ComponentSumsCallback(L.Callback):
    """The bookkeeping shared by callbacks that reduce draws to sums (subclasses say which sums).

    Each (component, chain) unit folds its draws into fresh sums, saved beside the unit's ``done``
    marker when it finishes (the resume state). After fitting, every rank merges the units it
    owns per component and the sums are reduced across ranks, one collective per statistic;
    ``self.sums`` then holds one reduced ``StreamingSums`` per component and ``finish`` runs.
    """

    state_name = ""

    def __init__(self) -> None:
        self._unit_sums: StreamingSums | None = None
        self.sums: list[StreamingSums] | None = None

    def empty_sums(self, pl_module) -> StreamingSums:
        raise NotImplementedError

    def fold(self, sums: StreamingSums, draw: dict, pl_module) -> None:
        raise NotImplementedError

    def finish(self, pl_module) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        unit = outputs["unit"]
        if unit is None:
            return
        if outputs["step"] == 0:
            self._unit_sums = self.empty_sums(pl_module)
        if outputs["draw"] is not None:
            self.fold(self._unit_sums, outputs["draw"], pl_module)
        if outputs["unit_done"]:
            save_unit_tensors(pl_module.unit_dir(unit), self.state_name, self._unit_sums.state())
            self._unit_sums = None

    def on_train_end(self, trainer, pl_module) -> None:
        per_component = [self.empty_sums(pl_module) for _ in pl_module.component_names]
        for unit in pl_module.owned_units():
            state = load_unit_tensors(pl_module.unit_dir(unit), self.state_name, pl_module.device)
            per_component[unit.component_index].merge(type(per_component[0]).from_state(state))
        stacked = {k: reduce_sum(trainer, torch.stack([s.state()[k] for s in per_component]))
                   for k in per_component[0].state_names}
        self.sums = [type(per_component[0]).from_state({k: v[i] for k, v in stacked.items()})
                     for i in range(len(per_component))]
        self.finish(pl_module)
