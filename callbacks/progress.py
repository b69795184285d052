"""The sampler's progress bar: which component, chain and draw the current step belongs to."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class ChainProgressBar(TQDMProgressBar):
    """Lightning's bar, titled by round rather than epoch (an epoch of the sampler is one round of
    every unfinished component's chains), with the component, the chains and the draw of the
    latest step beside it."""

    def __init__(self) -> None:
        super().__init__()
        self._where: dict[str, Any] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"round {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        chains = outputs["chains"] if isinstance(outputs, dict) else []
        if chains:
            unit, step = chains[0]["unit"], chains[0]["step"]
            plan = pl_module.plan(unit.component_index)
            self._where = {"component": unit.component,
                           "chain": "+".join(str(c["unit"].chain) for c in chains),
                           "draw": f"{plan.draws_done(step)}/{plan.draws}"}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return {**self._where, **super().get_metrics(trainer, pl_module)}
