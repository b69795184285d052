"""The progress bars of lit-susc's Trainers: the sampler's (which component, chain and draw the
current step belongs to) and one over the optimizer steps of a run bounded by ``max_steps``."""

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


class StepProgressBar(TQDMProgressBar):
    """One bar from step 0 to ``trainer.max_steps``, titled ``description``, for a Trainer that
    stops at max_steps with ``max_epochs=-1``: Lightning's own bar counts the batches of each pass
    over the data and titles it by an epoch out of max_epochs - 1 ('Epoch 0/-2')."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        if trainer.current_epoch == 0:  # the later passes over the data continue the same bar
            self.train_progress_bar.reset(total=trainer.max_steps)
            self.train_progress_bar.set_description(self.description)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, done = self.train_progress_bar, trainer.global_step
        if self._should_update(done, bar.total):
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar
