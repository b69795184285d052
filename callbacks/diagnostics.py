"""Per-chain loss traces (with the sampler's step norms at draws) and divergence detection."""

from __future__ import annotations

import math

import lightning as L
import pyarrow as pa

from lit_susc.langevin import STEP_NORMS
from lit_susc.unit_state import load_unit_table, save_unit_table


class ChainDivergedError(RuntimeError):
    """A chain's loss became non-finite or exploded."""


class DiagnosticsCallback(L.Callback):
    """Records the minibatch loss of every SGLD step and, at every draw, L_ref and the step's norms
    (gradient, noise and localization terms, distance from w*; lit_susc.langevin), per chain.

    Traces go to the Lightning logger (``sgld/loss``, ``sgld/phi``) and, per unit, to Parquet
    files that the run gathers into ``traces.parquet``. A non-finite minibatch loss, or one more
    than ``max_loss_increase`` nats above L_ref(w*), stops the run with an error naming the
    component, chain and step.
    """

    state_name = "trace"

    def __init__(self, max_loss_increase: float | None = 10.0, log_every_n_steps: int = 10) -> None:
        self.max_loss_increase = max_loss_increase
        self.log_every_n_steps = log_every_n_steps
        self._rows: dict[int, dict[str, list]] = {}  # by unit index: a batched step carries several chains

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        chains = outputs["chains"]
        for chain in chains:
            self._record(pl_module, chain)
        if chains:  # the first chain of the step stands for its group in the logger
            step, loss, draw = chains[0]["step"], float(chains[0]["minibatch_loss"]), chains[0]["draw"]
            if step % self.log_every_n_steps == 0:
                pl_module.log("sgld/loss", loss, on_step=True, on_epoch=False)
            if draw is not None:
                pl_module.log("sgld/phi", float(draw["phi"]), on_step=True, on_epoch=False)

    def _record(self, pl_module, chain: dict) -> None:
        unit, step, loss = chain["unit"], chain["chain_step"], float(chain["minibatch_loss"])
        if chain["step"] == 0:
            self._rows[unit.index] = {"step": [], "loss": [], "ref_loss": [], **{name: [] for name in STEP_NORMS}}
        start = float(pl_module.ref_loss_star)
        if not math.isfinite(loss) or (self.max_loss_increase is not None and loss > start + self.max_loss_increase):
            raise ChainDivergedError(
                f"chain {unit.chain} of component {unit.component!r} diverged at step {step}: minibatch loss "
                f"{loss:.4g} against L_ref(w*) = {start:.4g}. Lower the lr or raise the localization "
                f"(or raise DiagnosticsCallback.max_loss_increase if such losses are expected)."
            )
        rows, draw = self._rows[unit.index], chain["draw"]
        rows["step"].append(step)
        rows["loss"].append(loss)
        rows["ref_loss"].append(float(draw["ref_loss"]) if draw is not None else float("nan"))
        for name in STEP_NORMS:
            rows[name].append(float(draw["norms"][name]) if draw is not None else float("nan"))
        if chain["unit_done"]:
            rows = self._rows.pop(unit.index)
            table = pa.table({"component": [unit.component] * len(rows["step"]),
                              "chain": [unit.chain] * len(rows["step"]), **rows})
            save_unit_table(pl_module.unit_dir(unit), self.state_name, table)

    @classmethod
    def gather(cls, pl_module) -> pa.Table:
        """All units' traces (read from disk; call on one rank after every unit is done)."""
        tables = [load_unit_table(pl_module.unit_dir(u), cls.state_name) for u in pl_module.units]
        return pa.concat_tables(tables)
