"""Per-component streaming sums: folded at every draw, saved per unit, merged and reduced at the end."""

from __future__ import annotations

import lightning as L
import torch

from lit_susc.covariance import StreamingSums
from lit_susc.unit_state import load_unit_tensors, reduce_sum, save_unit_tensors


class ComponentSumsCallback(L.Callback):
    """The bookkeeping shared by callbacks that reduce draws to sums (subclasses say which sums).

    Each (component, chain) unit folds its draws into fresh sums, saved beside the unit's ``done``
    marker when it finishes (the resume state). After fitting, the components are taken in
    blocks that fit the run's memory budget (``compute.memory_budget_gb``): every rank merges the
    units it owns of the block's components, the block is reduced across ranks (one collective per
    statistic) and moved to the CPU, and ``summarize`` turns each component's reduced sums into its
    results (the sums are dropped then, so neither device nor host holds more than one block of
    them). ``self.results`` maps each result name to a tensor [n_components, ...]; then ``finish``.
    """

    state_name = ""

    def __init__(self) -> None:
        self._unit_sums: dict[int, StreamingSums] = {}  # by unit index: a batched step carries several chains
        self.results: dict[str, torch.Tensor] | None = None

    def empty_sums(self, pl_module) -> StreamingSums:
        raise NotImplementedError

    def fold(self, sums: StreamingSums, draw: dict, pl_module) -> None:
        raise NotImplementedError

    def summarize(self, sums: StreamingSums, pl_module) -> dict[str, torch.Tensor]:
        """One component's results from its reduced sums (on the CPU)."""
        raise NotImplementedError

    def finish(self, pl_module) -> None:
        """Runs once ``self.results`` holds every component's results."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for chain in outputs["chains"]:
            unit = chain["unit"]
            if chain["step"] == 0:
                self._unit_sums[unit.index] = self.empty_sums(pl_module)
            if chain["draw"] is not None:
                self.fold(self._unit_sums[unit.index], chain["draw"], pl_module)
            if chain["unit_done"]:
                save_unit_tensors(pl_module.unit_dir(unit), self.state_name, self._unit_sums.pop(unit.index).state())

    def block_size(self, pl_module) -> int:
        """Components per reduction block: a block's local and stacked sums fit the memory budget."""
        per_component = sum(t.numel() for t in self.empty_sums(pl_module).state().values()) * 8
        return max(1, pl_module.compute.budget_bytes // (2 * per_component))

    def reduce(self, trainer, pl_module) -> dict[str, torch.Tensor]:
        """Every component's results from the sums of all units so far, reduced across ranks in
        blocks (a collective: every rank calls it at the same point)."""
        units: dict[int, list] = {}
        for unit in pl_module.owned_units():
            units.setdefault(unit.component_index, []).append(unit)
        n, block = len(pl_module.component_names), self.block_size(pl_module)
        if block < n and trainer.is_global_zero:
            print(f"lit-susc: {self.state_name} sums reduced in blocks of {block} of the {n} components "
                  f"(compute.memory_budget_gb = {pl_module.compute.memory_budget_gb})")
        results: list[dict[str, torch.Tensor]] = []
        for lo in range(0, n, block):  # every rank takes the same blocks: the reductions pair up
            local = [self.empty_sums(pl_module) for _ in range(lo, min(n, lo + block))]
            for j, sums in enumerate(local):
                for unit in units.get(lo + j, []):
                    state = load_unit_tensors(pl_module.unit_dir(unit), self.state_name, pl_module.device)
                    sums.merge(type(sums).from_state(state))
            states = [s.state() for s in local]
            stacked = {k: reduce_sum(trainer, torch.stack([st[k] for st in states])).cpu() for k in states[0]}
            results += [self.summarize(type(local[0]).from_state({k: v[j] for k, v in stacked.items()}), pl_module)
                        for j in range(len(local))]
        return {k: torch.stack([r[k] for r in results]) for k in results[0]}

    def on_train_end(self, trainer, pl_module) -> None:
        self.results = self.reduce(trainer, pl_module)
        self.finish(pl_module)
