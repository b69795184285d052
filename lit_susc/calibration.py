"""Calibration: which step size, nbeta and localization to sample with.

``calibrate`` runs ``estimate_susceptibilities`` once per cell (component, lr, nbeta,
localization) of a grid, every other sampler setting taken from ``sgld``, and tabulates per cell
the LLC (mean and std over chains), split-R-hat and bulk ESS of the phi traces
(lit_susc.diagnostics), whether a chain diverged, a stationarity measure and, where the user gave
observation data, the reliability of chi (lit_susc.result).

**Stationarity.** With the L_ref traces of a cell's chains, draws split into a first and a second
half (per chain, pooled over chains; phi differs from L_ref by a constant),

    z = (mean of second halves - mean of first halves) / sqrt(var_1 / ESS_1 + var_2 / ESS_2)

with var_i the variance of half i's draws and ESS_i its bulk ESS: a Geweke-type test of a drift
that burn-in has not removed, in units of its standard error (chains start at w*, where phi = 0,
so an unfinished burn-in shows as z > 0). It needs at least 4 draws per half.

**The rule** (``CalibrationRule``; defaults in brackets). A cell qualifies when

1. no chain diverged (``ChainDivergedError``, or a non-finite LLC);
2. its traces are stationary: |z| < ``max_stationarity`` [3; 2 would reject 5% of stationary
   cells by chance, and a grid has many cells];
3. its chains converged: R-hat < ``max_rhat`` [1.1; lit_susc.diagnostics warns above 1.05, which
   the short chains of a calibration seldom get below];
4. its LLC is stable in the step size: the next smaller or the next larger lr of the grid, at the
   same nbeta and localization, did not diverge and has an LLC within ``llc_tolerance`` [20%] of
   this cell's, relative to the smaller of the two (|llc' - llc| <= tol min(|llc|, |llc'|), so two
   neighbours agree or disagree whichever is asked). Too small a step has not reached the
   posterior, too large a one is biased by the discretization: both change the LLC with lr, the
   plateau between does not. Not judged (``stable`` null) when the grid has one lr.

Per component, the pick is the qualifying cell with the largest bulk ESS (every cell runs the
same number of steps, so this is the most effective draws per step); ties go to the larger lr.
``best`` is one setting for all components, because the ``sample`` stage runs all of them with
one ``sgld``: among the settings where no component diverged (a divergence would stop that run)
and some component qualifies, the one that qualifies for most components, then with the largest
median ESS over those components, then the larger lr. If no setting is left, ``best`` is None and
``reason`` says which criteria failed how often.

Each cell is its own run directory, ``<run_dir>/cells/lr=..._nbeta=..._loc=.../<component>/``,
so a killed calibration resumes where it stopped and finished cells are read back, not rerun; a
diverged cell is rerun from its last finished chain (its seeds fix noise and minibatches, so it
diverges again at the same step). ``run_dir=None`` uses a temporary directory, removed at the end.
The model is handed back at w* after every cell, diverged ones included.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from torch import nn

from callbacks.diagnostics import ChainDivergedError

from .api import estimate_susceptibilities
from .chains import LossFn
from .components import resolve_components
from .config import ComputeConfig, SGLDConfig
from .diagnostics import bulk_ess
from .figures import Figure, save_png
from .rundir import mark_finished, read_parquet, stage_remedy, write_parquet, write_text

MIN_DRAWS = 8
"""Draws per chain a calibration needs: the stationarity test compares halves of >= 4 draws."""

CRITERIA = ("diverged", "stationarity", "rhat", "stability")
"""The rule's criteria, in the order the module docstring gives them (the table's ``failed``)."""


@dataclass(frozen=True)
class CalibrationRule:
    """Thresholds of the rule that picks the recommended setting (module docstring)."""

    max_rhat: float = 1.1
    """A cell's chains converged when split-R-hat of its phi traces is below this."""
    max_stationarity: float = 3.0
    """A cell is stationary when |z| of its half-vs-half drift test is below this."""
    llc_tolerance: float = 0.2
    """A cell's LLC is stable when a neighbouring lr's LLC is within this fraction of it."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_rhat) and self.max_rhat > 1):
            raise ValueError(f"rule.max_rhat must be a finite number > 1, got {self.max_rhat}")
        for name in ("max_stationarity", "llc_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"rule.{name} must be a finite number > 0, got {value}")


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the three sampler settings a calibration varies."""

    lr: float
    nbeta: float
    localization: float

    @property
    def dirname(self) -> str:
        return f"lr={self.lr:.6g}_nbeta={self.nbeta:.6g}_loc={self.localization:.6g}"

    def describe(self) -> str:
        return f"lr={self.lr:.3g}, nbeta={self.nbeta:.4g}, localization={self.localization:.4g}"


def grid_settings(lr: Sequence[float] | None, nbeta: Sequence[float] | None,
                  localization: Sequence[float] | None, sgld: SGLDConfig) -> list[Setting]:
    """The grid's settings, sorted; a grid left None is the one value of ``sgld``.

    Raises ValueError for an empty grid, a repeated value, or a value that is not a finite
    number (lr and nbeta > 0, localization >= 0).
    """
    axes = []
    for name, values, default, low in (("lr", lr, sgld.lr, 0.0), ("nbeta", nbeta, sgld.nbeta, 0.0),
                                       ("localization", localization, sgld.localization, None)):
        values = [default] if values is None else list(values)
        if not values:
            raise ValueError(f"the {name} grid is empty: give at least one value")
        for v in values:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= 0 if low is not None else v < 0):
                bound = "> 0" if low is not None else ">= 0"
                raise ValueError(f"every {name} of the grid must be a finite number {bound}, got {v!r}")
        if len({f"{float(v):.6g}" for v in values}) < len(values):
            raise ValueError(f"the {name} grid repeats a value (to 6 significant digits): {values}")
        axes.append(sorted(float(v) for v in values))
    return [Setting(*values) for values in product(*axes)]


def stationarity(traces: np.ndarray) -> float:
    """z of the drift between the second and the first half of [chains, draws] traces (module
    docstring); NaN with fewer than 4 draws per half or a constant half."""
    traces = np.asarray(traces, dtype=np.float64)
    half = traces.shape[1] // 2
    if half < 4:
        return math.nan
    first, second = traces[:, :half], traces[:, -half:]
    variance = first.var(ddof=1) / bulk_ess(first) + second.var(ddof=1) / bulk_ess(second)
    if not (math.isfinite(variance) and variance > 0):
        return math.nan
    return float((second.mean() - first.mean()) / math.sqrt(variance))


def _draw_traces(traces: pa.Table, component: str) -> np.ndarray:
    """L_ref at the draws of one component's chains, [chains, draws] (a run's traces.parquet)."""
    draws = traces.filter(pc.and_(pc.equal(traces["component"], component),
                                  pc.invert(pc.is_nan(traces["ref_loss"]))))
    chains = sorted(set(draws["chain"].to_pylist()))
    per_chain = [draws.filter(pc.equal(draws["chain"], k)).sort_by("step")["ref_loss"].to_numpy() for k in chains]
    length = min(len(t) for t in per_chain)
    return np.stack([t[:length] for t in per_chain])


TABLE_SCHEMA = pa.schema([
    ("component", pa.string()), ("lr", pa.float64()), ("nbeta", pa.float64()), ("localization", pa.float64()),
    ("diverged", pa.bool_()), ("llc_mean", pa.float64()), ("llc_std", pa.float64()), ("rhat", pa.float64()),
    ("ess", pa.float64()), ("stationarity", pa.float64()), ("reliability", pa.float64()),
    ("llc_change", pa.float64()), ("stable", pa.bool_()), ("qualifies", pa.bool_()), ("failed", pa.string()),
])
"""calibration.parquet: one row per (component, lr, nbeta, localization). ``stationarity`` is z
and ``llc_change`` the smallest |llc' - llc| / min(|llc|, |llc'|) over the non-diverged
neighbouring lr cells (NaN without one; module docstring); ``stable`` is null where it is not
judged (a diverged cell, a grid of one lr); ``failed`` lists the criteria a cell fails
(``CRITERIA``, comma-separated; empty when it qualifies; only ``diverged`` for a diverged cell);
``reliability`` is NaN when the calibration observed a slice of the sampling data."""


@dataclass
class Calibration:
    """What ``calibrate`` found: the table, the recommendation and why."""

    best: SGLDConfig | None
    """The recommended sampler settings (the base ``sgld`` with the best lr, nbeta and
    localization), or None when no setting qualifies."""
    table: pa.Table
    """One row per (component, lr, nbeta, localization), columns of ``TABLE_SCHEMA``."""
    reason: str
    """One sentence: why ``best`` is that setting, or why there is none."""
    per_component: dict[str, SGLDConfig | None] = field(default_factory=dict)
    """Each component's own pick by the rule (None where none of its cells qualifies)."""
    rule: CalibrationRule = field(default_factory=CalibrationRule)

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``calibration.parquet``, ``calibration.png``, ``best_sgld.yaml`` (the recommended
        ``sgld:`` block; removed when there is none) and ``summary.json``, last."""
        directory = Path(directory)
        write_parquet(directory / "calibration.parquet", self.table)
        self.plot(directory / "calibration.png")
        best_file = directory / "best_sgld.yaml"
        if self.best is None:
            best_file.unlink(missing_ok=True)  # a stale recommendation from an earlier grid would mislead
        else:
            write_text(best_file, f"# run.py calibrate: {self.reason}\n"
                       + yaml.safe_dump({"sgld": self.best.to_dict()}, sort_keys=False))
        setting = lambda s: s and {k: getattr(s, k) for k in ("lr", "nbeta", "localization")}
        mark_finished(directory, {
            "best": None if self.best is None else self.best.to_dict(), "reason": self.reason,
            "per_component": {name: setting(s) for name, s in self.per_component.items()},
            "rule": asdict(self.rule), "cells": self.table.num_rows,
            "diverged": int(pc.sum(self.table["diverged"]).as_py() or 0),
            "qualifying": int(pc.sum(self.table["qualifies"]).as_py() or 0), **(extra or {}),
        })
        return directory

    def plot(self, path: str | Path) -> Path:
        """LLC and R-hat against lr, one line per nbeta, one row per component and a pair of panels
        per localization (devinterp's epsilon-beta plots): filled markers qualify, hollow ones do
        not, an x on the axis marks a diverged cell, a black ring the recommended setting."""
        rows = self.table.to_pylist()
        components = list(dict.fromkeys(r["component"] for r in rows))
        nbetas = sorted({r["nbeta"] for r in rows})
        locs = sorted({r["localization"] for r in rows})
        fig = Figure(figsize=(4.2 * 2 * len(locs), 2.4 * len(components) + 0.6), layout="constrained")
        axes = fig.subplots(len(components), 2 * len(locs), squeeze=False)
        colors = [f"C{i % 10}" for i in range(len(nbetas))]
        for i, component in enumerate(components):
            for j, loc in enumerate(locs):
                for k, (metric, label) in enumerate((("llc_mean", "LLC"), ("rhat", "R-hat"))):
                    ax = axes[i, 2 * j + k]
                    for nbeta, color in zip(nbetas, colors):
                        cells = sorted((r for r in rows if r["component"] == component and r["nbeta"] == nbeta
                                        and r["localization"] == loc), key=lambda r: r["lr"])
                        lrs = [r["lr"] for r in cells]
                        ax.plot(lrs, [r[metric] for r in cells], color=color, lw=1, label=f"nbeta={nbeta:.4g}")
                        for r in cells:
                            if r["diverged"]:  # no value to draw: mark the cell on the lr axis
                                ax.plot(r["lr"], 0.04, "x", color=color, ms=8, mew=2,
                                        transform=ax.get_xaxis_transform())
                            else:
                                ax.plot(r["lr"], r[metric], "o", color=color,
                                        mfc=color if r["qualifies"] else "none")
                            if self.best is not None and (r["lr"], r["nbeta"], r["localization"]) == (
                                    self.best.lr, self.best.nbeta, self.best.localization) and not r["diverged"]:
                                ax.plot(r["lr"], r[metric], "o", ms=13, mfc="none", mec="black", mew=1.5)
                    if metric == "rhat":
                        ax.axhline(self.rule.max_rhat, color="grey", ls="--", lw=1)
                    ax.set_xscale("log")
                    ax.set_title(f"{component}: {label}, localization {loc:.4g}", fontsize=9)
                    if i == len(components) - 1:
                        ax.set_xlabel("lr")
        axes[0, 0].legend(fontsize=7)
        width = int(14 * fig.get_figwidth())  # characters of 9-point text across the figure
        fig.suptitle(textwrap.fill(f"calibration: {self.reason}", width) + "\nfilled: qualifies, hollow: fails the "
                     "rule, x: diverged, ring: recommended", fontsize=9)
        return save_png(fig, path)


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    sampling_data: Iterable[Any],
    components=None,
    *,
    lr: Sequence[float] | None = None,
    nbeta: Sequence[float] | None = None,
    localization: Sequence[float] | None = None,
    sgld: SGLDConfig | None = None,
    trainer: dict | None = None,
    observation_data: Iterable[Any] | None = None,
    reference_data: Any = None,
    run_dir: str | Path | None = None,
    compute: ComputeConfig | None = None,
    rule: CalibrationRule | None = None,
) -> Calibration:
    """Sweep lr x nbeta x localization, tabulate each cell, and recommend a setting (module docstring).

    Args:
        model, loss_fn, sampling_data, components, reference_data, compute: as for
            ``estimate_susceptibilities``.
        lr, nbeta, localization: the grid; None is the single value of ``sgld``.
        sgld: every other sampler setting (chains >= 2, draws >= 8), copied into ``best``.
        trainer: extra Lightning Trainer arguments (one process; progress bars off unless given).
        observation_data: the observation batches of the run to be calibrated, for chi's
            reliability; None observes the first sampling batch and reports reliability NaN.
        run_dir: where the cells' run directories go (resumable); None: a temporary directory.
        rule: the thresholds of the rule.

    A setting that qualifies for no component is not an error: ``best`` is then None and
    ``reason`` says why.
    """
    sgld = sgld or SGLDConfig()
    settings = grid_settings(lr, nbeta, localization, sgld)
    rule = rule or CalibrationRule()
    if sgld.chains < 2 or sgld.draws < MIN_DRAWS:
        raise ValueError(f"calibration needs sgld.chains >= 2 (for R-hat) and sgld.draws >= {MIN_DRAWS} (for the "
                         f"stationarity test), got chains={sgld.chains}, draws={sgld.draws}")
    trainer = {"enable_progress_bar": False, **(trainer or {})}
    if str(trainer.get("strategy", "auto")).startswith("ddp") or trainer.get("num_nodes", 1) != 1 or \
            (isinstance(trainer.get("devices"), int) and trainer["devices"] > 1):
        raise ValueError("calibrate runs in one process (a chain diverging on one rank would leave the others "
                         "waiting); give trainer devices: 1")
    sampling = list(sampling_data)
    if not sampling:
        raise ValueError("sampling data is empty: give at least one minibatch for the SGLD gradients")
    observed = observation_data is not None
    observation = list(observation_data) if observed else sampling[:1]
    resolved = resolve_components(model, components)
    names = {name: re.sub(r"[^A-Za-z0-9._-]", "_", name) for name in resolved}
    if len(set(names.values())) < len(names):
        raise ValueError(f"component names {sorted(resolved)} do not map to distinct directory names; rename them")

    temporary = run_dir is None
    root = Path(tempfile.mkdtemp(prefix="lit-susc-calibrate-") if temporary else run_dir)
    w_star = _Snapshot(model, resolved)
    rows = []
    try:
        for setting in settings:
            config = replace(sgld, lr=setting.lr, nbeta=setting.nbeta, localization=setting.localization)
            for name, component in resolved.items():
                cell_dir = root / "cells" / setting.dirname / names[name]
                try:
                    res = estimate_susceptibilities(model, loss_fn, sampling, observation, {name: component},
                                                    sgld=config, trainer=trainer, reference_data=reference_data,
                                                    run_dir=cell_dir, compute=compute)
                except ChainDivergedError as err:
                    w_star.restore()  # the run stopped mid-chain, before the sampler could restore w*
                    print(f"lit-susc: calibrate: {setting.describe()}: {err}")
                    rows.append(_row(name, setting, diverged=True))
                    continue
                llc, diagnostics = res.llc[name], res.diagnostics[name]
                traces = read_parquet(cell_dir / "traces.parquet", stage_remedy(cell_dir))
                rows.append(_row(
                    name, setting, diverged=not math.isfinite(llc["mean"]), llc_mean=llc["mean"],
                    llc_std=llc["std"], rhat=diagnostics["rhat"], ess=diagnostics["ess"],
                    stationarity=stationarity(_draw_traces(traces, name)),
                    reliability=res.reliability.get(name, math.nan) if observed else math.nan))
    finally:
        w_star.restore()  # also when interrupted mid-cell
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return _judge(rows, sgld, rule, multiple_lr=len({s.lr for s in settings}) > 1)


class _Snapshot:
    """The components' parameters at w* and every parameter's requires_grad flag, to put back."""

    def __init__(self, model: nn.Module, components: dict[str, dict]) -> None:
        self.params = dict(model.named_parameters())
        moved = {p for component in components.values() for p in component}
        with torch.no_grad():
            self.values = {n: self.params[n].detach().clone() for n in moved}
        self.requires_grad = {n: p.requires_grad for n, p in self.params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for n, value in self.values.items():
            self.params[n].copy_(value)
        for n, flag in self.requires_grad.items():
            self.params[n].requires_grad_(flag)


def _row(component: str, setting: Setting, diverged: bool, **values: float) -> dict:
    nan = math.nan
    row = {"component": component, "lr": setting.lr, "nbeta": setting.nbeta, "localization": setting.localization,
           "diverged": diverged, "llc_mean": nan, "llc_std": nan, "rhat": nan, "ess": nan, "stationarity": nan,
           "reliability": nan}
    row.update({k: float(v) for k, v in values.items()})
    if diverged:  # a non-finite LLC says nothing about the other diagnostics either
        row.update({k: nan for k in ("llc_mean", "llc_std", "rhat", "ess", "stationarity", "reliability")})
    return row


def _judge(rows: list[dict], sgld: SGLDConfig, rule: CalibrationRule, multiple_lr: bool) -> Calibration:
    """Judge every cell by the rule, pick per component and overall (module docstring)."""
    by_key = {(r["component"], r["nbeta"], r["localization"], r["lr"]): r for r in rows}
    lrs = sorted({r["lr"] for r in rows})
    for r in rows:
        i = lrs.index(r["lr"])
        neighbours = [by_key.get((r["component"], r["nbeta"], r["localization"], lr)) for lr in lrs[max(i - 1, 0):i + 2]
                      if lr != r["lr"]]
        changes = [_relative_change(r["llc_mean"], n["llc_mean"]) for n in neighbours
                   if n is not None and not n["diverged"] and not r["diverged"]]
        r["llc_change"] = min(changes) if changes else math.nan
        r["stable"] = (bool(changes) and r["llc_change"] <= rule.llc_tolerance) if multiple_lr and not r["diverged"] \
            else None
        passed = {"stationarity": abs(r["stationarity"]) < rule.max_stationarity, "rhat": r["rhat"] < rule.max_rhat,
                  "stability": r["stable"] is not False}
        # A diverged cell has no traces to judge: "diverged" is all there is to say about it.
        r["failed"] = "diverged" if r["diverged"] else ",".join(c for c in CRITERIA[1:] if not passed[c])
        r["qualifies"] = not r["failed"]
    table = pa.Table.from_pylist(rows, schema=TABLE_SCHEMA)

    config = lambda s: replace(sgld, lr=s.lr, nbeta=s.nbeta, localization=s.localization)
    setting_of = lambda r: Setting(r["lr"], r["nbeta"], r["localization"])
    components = list(dict.fromkeys(r["component"] for r in rows))
    per_component = {}
    for name in components:
        mine = [r for r in rows if r["component"] == name and r["qualifies"]]
        pick = max(mine, key=lambda r: (r["ess"], r["lr"]), default=None)
        per_component[name] = None if pick is None else config(setting_of(pick))

    scores = {}
    for setting in dict.fromkeys(setting_of(r) for r in rows):
        mine = [r for r in rows if setting_of(r) == setting]
        good = [r for r in mine if r["qualifies"]]
        if good and not any(r["diverged"] for r in mine):
            scores[setting] = (len(good), statistics.median(r["ess"] for r in good), setting.lr)
    if not scores:
        return Calibration(best=None, table=table, reason=_why_none(rows, rule), per_component=per_component,
                           rule=rule)
    best = max(scores, key=scores.get)
    count, ess, _ = scores[best]
    reason = (f"{best.describe()} qualifies for {count} of {len(components)} components "
              f"(median bulk ESS {ess:.0f})")
    misses = [f"{r['component']} ({r['failed']})" for r in rows if setting_of(r) == best and not r["qualifies"]]
    if misses:
        reason += "; not for " + ", ".join(misses)
    return Calibration(best=config(best), table=table, reason=reason, per_component=per_component, rule=rule)


def _relative_change(a: float, b: float) -> float:
    """|a - b| relative to the smaller of the two: the same number seen from either cell."""
    smaller = min(abs(a), abs(b))
    return abs(a - b) / smaller if smaller > 0 else (0.0 if a == b else math.inf)


def _why_none(rows: list[dict], rule: CalibrationRule) -> str:
    """Which criteria the cells failed, and how often."""
    words = {"diverged": "diverged", "stationarity": f"drifted (|z| >= {rule.max_stationarity:g})",
             "rhat": f"did not converge (R-hat >= {rule.max_rhat:g} or unknown)",
             "stability": f"had no neighbouring lr with an LLC within {rule.llc_tolerance:.0%}"}
    counts = [(c, sum(c in r["failed"].split(",") for r in rows)) for c in CRITERIA]
    failures = ", ".join(f"{n} {words[c]}" for c, n in counts if n)
    if any(r["qualifies"] for r in rows):
        return (f"no setting qualifies: every setting where some component qualifies has a component whose chains "
                f"diverge, which would stop the sample stage; of {len(rows)} cells {failures}")
    return f"no cell qualifies: of {len(rows)} cells {failures}"
