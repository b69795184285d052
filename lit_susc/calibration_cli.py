"""``python run.py calibrate --config configs/calibrate_quickstart.yaml``: the calibration of a language model.

The YAML has ``output_dir``, ``trainer:`` (plain Lightning Trainer arguments), ``model:`` as the
``sample`` stage's (a hub name or local path, or ``pretrained: null`` to train the offline model
into ``<output_dir>/tiny_lm``; components, data, sgld, compute; no ``output_dir`` or
``shard_tokens``), ``grid:`` (lists ``lr``, ``nbeta``, ``localization``; a list left out is
``model.sgld``'s value) and ``rule:`` (lit_susc.calibration.CalibrationRule). The model's
observation contexts are observed, so the table's reliability is chi's. Writes, under
``output_dir``::

    cells/lr=..._nbeta=..._loc=.../<component>/   one sample run per cell (resumable)
    calibration.parquet                           the table (lit_susc.calibration.TABLE_SCHEMA)
    calibration.png                               LLC and R-hat against lr, per nbeta and localization
    best_sgld.yaml                                the recommended ``sgld:`` block, for ``model.sgld``
    config.yaml                                   the resolved config
    summary.json                                  written last: recommendation, reason, timing

When no setting qualifies, the table, the plot and summary.json (best: null) are still written
and the command ends with ``lit-susc: error: no ... qualifies ...`` and exit status 2: an error
rather than a warning, because what the command exists to produce, a setting to sample with, does
not exist, and a script that goes on to ``run.py sample`` with a stale or default setting would
spend its compute on chains known not to work.
"""

from __future__ import annotations

import time
from pathlib import Path

from .calibration import CalibrationRule, calibrate, grid_settings
from .config import SGLDConfig


class NoQualifyingSetting(ValueError):
    """The calibration finished, and no setting of its grid passes the rule."""


def main(argv: list[str] | None = None) -> Path:
    """Entry point of ``run.py calibrate``: ``argv`` is what follows ``calibrate`` on the command line."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from .lm import lm_susceptibilities

    parser = ArgumentParser(prog="run.py calibrate", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of the fields below")
    parser.add_argument("--output_dir", type=str, default="runs/calibrate", help="where the calibration goes")
    parser.add_argument("--trainer", type=dict, default={}, help="Lightning Trainer arguments (one process)")
    parser.add_function_arguments(lm_susceptibilities, "model", skip={"output_dir", "shard_tokens"})
    for axis in ("lr", "nbeta", "localization"):
        parser.add_argument(f"--grid.{axis}", type=list[float] | None, default=None,
                            help=f"the {axis} values of the grid (null: model.sgld's)")
    parser.add_class_arguments(CalibrationRule, "rule", instantiate=False)
    cfg = parser.parse_args(argv)

    # Check the grid before the model is built: training the offline model takes minutes.
    sgld = SGLDConfig(**cfg.model.sgld.as_dict()) if cfg.model.sgld is not None else SGLDConfig()
    grid = {axis: cfg.grid[axis] for axis in ("lr", "nbeta", "localization")}
    grid_settings(**grid, sgld=sgld)
    rule = CalibrationRule(**cfg.rule.as_dict())

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(parser.dump(cfg, skip_none=False))
    start = time.perf_counter()
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    init = instantiate(cfg.clone())
    lm = lm_susceptibilities(**init.model.as_dict(), output_dir=str(output_dir))
    cal = calibrate(lm.model, lm.loss_fn, lm.data.sampling, lm.components, **grid, sgld=lm.sgld,
                    trainer=cfg.trainer, observation_data=lm.data.observation, reference_data=lm.data.reference,
                    run_dir=output_dir, compute=lm.compute, rule=rule)
    cal.save(output_dir, extra={"seconds": round(time.perf_counter() - start, 1),
                                "observation_tokens": sum(b.numel() - b.shape[0] for b in lm.data.observation)})
    columns = ["component", "lr", "nbeta", "localization", "llc_mean", "rhat", "ess", "stationarity", "reliability",
               "failed"]
    print(_format(cal.table.select(columns).to_pylist(), columns))
    if cal.best is None:
        raise NoQualifyingSetting(f"{cal.reason}; see {output_dir / 'calibration.parquet'} and "
                                  f"{output_dir / 'calibration.png'}, then widen the grid or lengthen the chains")
    print(f"\nlit-susc: recommended {cal.reason}\n  written to {output_dir / 'best_sgld.yaml'} "
          "(paste it as model.sgld of the sample stage)")
    return output_dir


def _format(rows: list[dict], columns: list[str]) -> str:
    """The rows as an aligned text table, numbers to 4 significant digits."""
    cells = [columns] + [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
