"""``calibrate``: a sweep over lr x nbeta x localization, its table, and the rule that picks a setting.

Oracle: the reduced-rank regression of design.md section 6 (as in test_learning_coefficient.py):
a linear m -> h -> n network without biases at w* = 0, x and y independent N(0, 1), n = 1000,
nbeta = n / ln n, learning coefficient (8, 3, 4) -> 6.0 (Aoyagi). Its LLC grows with the step size
(discretization bias: about 5.4 at lr 1e-3, 8 at 3e-3, 11.5 at 1e-2) and lr = 3e-2 diverges
within a few steps, so a grid over them has one right answer, a biased tail and a divergence.
"""

import json
import math

import pyarrow.parquet as pq
import pytest
import reduced_rank
import torch
import yaml
from reduced_rank import N
from tiny_runs import short_documents, write_yaml

import run
from lit_susc import SGLDConfig, calibrate
from lit_susc.calibration import TABLE_SCHEMA

NBETA = N / math.log(N)
DIVERGING_LR = 3e-2


def rrr(zero: bool = True):
    """The (8, 3, 4) reduced-rank regression: model (at w* = 0, or at a random point), loss, batches, X, Y."""
    model, batches, X, Y = reduced_rank.rrr(zero=zero)
    return model, reduced_rank.loss_fn, batches, X, Y


CPU = {"accelerator": "cpu", "enable_model_summary": False}


def test_reduced_rank_regression_recommends_an_llc_within_20_percent_of_6_and_marks_divergence(one_thread, tmp_path):
    model, loss_fn, batches, X, Y = rrr()
    sgld = SGLDConfig(chains=4, draws=200, burn_in=100, steps_between_draws=2, seed=0)
    grid = {"lr": [3e-4, 1e-3, 3e-3, 1e-2, DIVERGING_LR], "nbeta": [NBETA], "localization": [1.0]}
    cal = calibrate(model, loss_fn, batches, **grid, sgld=sgld, reference_data=(X, Y), trainer=CPU, run_dir=tmp_path)

    rows = {r["lr"]: r for r in cal.table.to_pylist()}
    assert [lr for lr, r in rows.items() if r["diverged"]] == [DIVERGING_LR]
    assert math.isnan(rows[DIVERGING_LR]["llc_mean"]) and rows[DIVERGING_LR]["failed"] == "diverged"
    assert cal.best is not None, cal.reason
    best = rows[cal.best.lr]
    assert abs(best["llc_mean"] - 6.0) <= 0.2 * 6.0, best
    assert best["qualifies"] and best["failed"] == ""
    # Everything but the three calibrated settings is the base config's.
    assert cal.best == SGLDConfig(**{**sgld.to_dict(), "lr": cal.best.lr, "nbeta": NBETA, "localization": 1.0})
    assert cal.per_component == {"all": cal.best}
    # The largest step that does not diverge mixes best (most ESS) but is biased: the rule rejects it.
    assert rows[1e-2]["ess"] > best["ess"] and rows[1e-2]["llc_mean"] > 1.5 * 6.0 and not rows[1e-2]["qualifies"]
    # Handed back at w* = 0 after every cell, also after the one that diverged mid-chain.
    assert all(torch.equal(p, torch.zeros_like(p)) and p.requires_grad for p in model.parameters())

    # A second call finds every cell finished (the diverged one is rerun up to its divergence).
    summary = tmp_path / "cells" / "lr=0.001_nbeta=144.765_loc=1" / "all" / "summary.json"
    before = summary.stat().st_mtime_ns
    again = calibrate(model, loss_fn, batches, **grid, sgld=sgld, reference_data=(X, Y), trainer=CPU, run_dir=tmp_path)
    assert summary.stat().st_mtime_ns == before
    assert str(again.table.to_pylist()) == str(cal.table.to_pylist()) and again.best == cal.best  # NaN == NaN


def test_best_is_none_with_a_reason_when_every_cell_diverges(one_thread):
    model, loss_fn, batches, X, Y = rrr()
    cal = calibrate(model, loss_fn, batches, lr=[DIVERGING_LR, 1e-1], nbeta=[NBETA], localization=[1.0],
                    sgld=SGLDConfig(chains=2, draws=8), reference_data=(X, Y), trainer=CPU)
    assert cal.best is None
    assert cal.reason == "no cell qualifies: of 2 cells 2 diverged"
    assert cal.table.column("diverged").to_pylist() == [True, True]
    assert cal.per_component == {"all": None}
    assert all(torch.equal(p, torch.zeros_like(p)) for p in model.parameters())


def test_table_has_one_row_per_component_and_setting_with_the_documented_columns(one_thread):
    model, loss_fn, batches, X, Y = rrr(zero=False)
    components = {"in": {"0.weight": None}, "out": {"1.weight": None}}
    cal = calibrate(model, loss_fn, batches, components, lr=[1e-4, 3e-4], nbeta=[NBETA],
                    localization=[1.0, 100.0], sgld=SGLDConfig(chains=2, draws=8),
                    observation_data=[(X[:16], Y[:16])], trainer=CPU)
    table = cal.table
    assert table.schema == TABLE_SCHEMA
    keys = [(r["component"], r["lr"], r["nbeta"], r["localization"]) for r in table.to_pylist()]
    grid = [(c, lr, NBETA, loc) for c in components for lr in (1e-4, 3e-4) for loc in (1.0, 100.0)]
    assert sorted(keys) == sorted(grid)
    # Observation data given: reliability is chi's, a share in [0, 1].
    assert all(0 <= r <= 1 for r in table.column("reliability").to_pylist())
    assert set(cal.per_component) == set(components)


@pytest.mark.parametrize("grid, sgld, message", [
    ({"lr": []}, {}, "the lr grid is empty"),
    ({"lr": [1e-3, 0.0]}, {}, "every lr of the grid must be a finite number > 0, got 0.0"),
    ({"nbeta": [-10.0]}, {}, "every nbeta of the grid must be a finite number > 0"),
    ({"localization": [-1.0]}, {}, "every localization of the grid must be a finite number >= 0"),
    ({"lr": [float("nan")]}, {}, "every lr of the grid must be a finite number > 0, got nan"),
    ({"lr": [1e-3, 1e-3]}, {}, "the lr grid repeats a value"),
    ({}, {"chains": 1}, "calibration needs sgld.chains >= 2"),
    ({}, {"draws": 4}, "sgld.draws >= 8"),
])
def test_bad_grids_and_settings_are_value_errors(grid, sgld, message):
    model, loss_fn, batches, _, _ = rrr()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calibrate(model, loss_fn, batches, **grid, sgld=SGLDConfig(**{"draws": 8, **sgld}))


def test_cli_writes_table_plot_best_sgld_and_summary_and_fails_clearly(tiny_lm_dir, tmp_path, capsys):
    out = tmp_path / "calibration"
    config = {
        "output_dir": str(out), "trainer": {"accelerator": "cpu"},
        "model": {"pretrained": str(tiny_lm_dir), "components": ["layers.0.heads.0", "unembed"],
                  "data": {"source": str(short_documents(tmp_path / "docs")), "context_length": 16,
                           "observation_contexts": 2, "sampling_contexts": 8, "batch_size": 4},
                  "sgld": {"nbeta": 50.0, "localization": 300.0, "chains": 2, "draws": 8, "burn_in": 2}},
        "grid": {"lr": [1e-4, 1e-3]},
    }
    path = write_yaml(tmp_path / "calibrate.yaml", config)

    # Chains of 8 draws do not converge (R-hat ~1.4-2.4): no setting qualifies. The table, the plot
    # and the summary are written all the same, then the command fails with one line.
    with pytest.raises(SystemExit) as exit_info:
        run.main(["calibrate", "--config", str(path)])
    assert exit_info.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-susc: error:")]
    assert len(error) == 1 and "no cell qualifies" in error[0] and "R-hat" in error[0], error
    assert pq.read_table(out / "calibration.parquet").num_rows == 2 * 2
    assert (out / "calibration.png").stat().st_size > 0 and not (out / "best_sgld.yaml").exists()
    assert json.loads((out / "summary.json").read_text())["best"] is None

    # A permissive rule (the cells are reused: the rule is not part of a cell) picks a setting.
    run.main(["calibrate", "--config", str(path), "--rule.max_rhat", "100", "--rule.max_stationarity", "100",
              "--rule.llc_tolerance", "100"])
    best = SGLDConfig(**yaml.safe_load((out / "best_sgld.yaml").read_text())["sgld"])
    assert best.lr in (1e-4, 1e-3) and (best.nbeta, best.chains, best.draws, best.burn_in) == (50.0, 2, 8, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == best.to_dict() and summary["cells"] == 4
    written = [out / name for name in ("calibration.parquet", "calibration.png", "best_sgld.yaml")]
    assert all((out / "summary.json").stat().st_mtime_ns >= p.stat().st_mtime_ns for p in written)

    # A bad grid: exit status 2 and one line, before any model is loaded.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run.main(["calibrate", "--config", str(path), "--grid.lr", "[0.001, -1]"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lit-susc: error: every lr of the grid must be a finite number > 0, got -1.0"]
