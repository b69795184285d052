"""Bad settings fail before anything is written, and no failed run poisons its output directory.

A setting out of its range (NaN and inf included) ends in one ``lit-susc: error:`` naming it and
the range it accepts, and leaves no run.json behind. A run directory whose run finished no unit,
or diverged (it cannot finish with its settings), is taken over by the next command with other
settings; one holding another run's finished units is refused, as the work would be lost. The
cluster and analyse stages refuse a directory of someone else's files; a finished aux fit is not
taken for one with other Trainer settings; a killed tiny-LM training leaves no working directory
behind once the model is trained or reused again.
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_cli import fails_with, sample, write_config
from tiny_runs import run_sample, short_documents
from tiny_runs import write_yaml as write

import run
from lit_susc import SusceptibilityResult
from lit_susc.rundir import RunDirectoryError, claim, mark_finished, write_json
from lit_susc.tinylm import SUMMARY_FILE, TinyLMConfig, load_causal_lm, train_tiny_lm

TWO_COMPONENTS = ["embed", "unembed"]
DIVERGING = {"lr": 10.0, "localization": 0.0}  # embed's chains survive it, unembed's first chain does not


def _nothing_written(out) -> bool:
    return not out.exists() or not any(out.iterdir())


def _exits_with_one_error(capsys, argv, pattern):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("lit-susc: error:") == 1 and pattern in err, err


@pytest.fixture(scope="module")
def finished_run(tiny_lm_dir, tmp_path_factory):
    """Both components sampled with the default test settings (test_cli.SGLD) into a fresh directory."""
    tmp = tmp_path_factory.mktemp("finished")
    sample(write_config(tmp / "c.yaml", tiny_lm_dir, tmp / "run", components=TWO_COMPONENTS))
    return tmp / "run"


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "sgld.lr must be a finite number > 0, got 0.0"),
    ("lr", -1e-3, "sgld.lr must be a finite number > 0, got -0.001"),
    ("lr", math.nan, "sgld.lr must be a finite number > 0, got nan"),
    ("lr", math.inf, "sgld.lr must be a finite number > 0, got inf"),
    ("nbeta", math.nan, "sgld.nbeta must be a finite number > 0, got nan"),
    ("localization", -1.0, "sgld.localization must be a finite number >= 0, got -1.0"),
    ("bounding_box", 0.0, "sgld.bounding_box must be a finite number > 0 or null, got 0.0"),
    ("noise_level", 0.0, "sgld.noise_level must be a finite number > 0, got 0.0: 0 is gradient descent"),
])
def test_a_bad_sgld_value_fails_naming_it_and_writes_nothing(tiny_lm_dir, tmp_path, capsys, field, value, message):
    out = tmp_path / "out"
    fails_with(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, sgld={field: value}), capsys, message)
    assert _nothing_written(out)


@pytest.mark.parametrize("extra, message", [
    ({"compute": {"memory_budget_gb": math.nan}}, "compute.memory_budget_gb must be a finite number >= 0, got nan"),
    ({"compute": {"batch_chains": 0}}, "compute.batch_chains must be a whole number >= 1, got 0"),
    ({"data": {"context_length": 1}}, "data.context_length must be a whole number >= 2, got 1"),
    ({"data": {"max_documents": 0}}, "data.max_documents must be a whole number >= 1 or null, got 0"),
])
def test_a_bad_compute_or_data_value_fails_naming_it_and_writes_nothing(tiny_lm_dir, tmp_path, capsys, extra,
                                                                        message):
    out = tmp_path / "out"
    fails_with(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, **extra), capsys, message)
    assert _nothing_written(out)


def test_shard_tokens_zero_fails_before_the_model_is_loaded(tiny_lm_dir, tmp_path, capsys, monkeypatch):
    """Oracle: loading the model raises, so an error about shard_tokens proves it came first (it
    used to surface only when the outputs were written, after all the sampling)."""
    def load_lm(*args, **kwargs):
        raise AssertionError("the model was loaded before shard_tokens was checked")

    monkeypatch.setattr("lit_susc.lm.load_lm", load_lm)
    out = tmp_path / "out"
    fails_with(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, shard_tokens=0), capsys,
               "shard_tokens must be a whole number >= 1, got 0")
    assert _nothing_written(out)


# ----------------------------------------------------------------------------- a run directory after a failure


def test_after_a_divergence_the_corrected_config_runs_in_the_same_directory(tiny_lm_dir, tmp_path, capsys,
                                                                             finished_run):
    """The divergence message says to lower the lr; doing so into the same output_dir replaces the
    diverged run, although embed's chains had finished under it. Oracle: the same corrected config
    run into a fresh directory (chi bitwise equal: nothing of the diverged run is used)."""
    out = tmp_path / "run"
    err = fails_with(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, components=TWO_COMPONENTS, sgld=DIVERGING),
                     capsys, "of component 'unembed' diverged")
    assert "Lower the lr" in err
    assert (out / "state" / "units" / "00000-chain000" / "done.json").exists()  # embed's first chain finished
    sample(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, components=TWO_COMPONENTS))
    assert (f"{out} held an unfinished run with other settings (differs in: sgld) that diverged"
            in capsys.readouterr().out)
    assert torch.equal(SusceptibilityResult.load(out).chi, SusceptibilityResult.load(finished_run).chi)


def test_a_run_that_finished_no_unit_is_replaced_by_one_with_other_settings(tiny_lm_dir, tmp_path, capsys):
    """A model whose loss at w* is NaN fails when sampling starts, after run.json is written; the
    command with the repaired model into the same directory runs and finishes."""
    model, tokenizer = load_causal_lm(str(tiny_lm_dir))
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    tokenizer.save_pretrained(tmp_path / "broken")
    out = tmp_path / "run"
    fails_with(write_config(tmp_path / "c.yaml", tmp_path / "broken", out, components=["embed"]), capsys,
               "reference loss at w* is nan")
    assert (out / "run.json").exists()
    sample(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, components=["embed"]))
    assert "held an unfinished run with other settings (differs in: " in capsys.readouterr().out
    assert (out / "summary.json").exists()


def test_a_directory_with_finished_units_of_another_run_is_refused(tiny_lm_dir, tmp_path, capsys, finished_run):
    """A run killed after its units finished (its run.json, config.yaml and state, as the finished
    run's) is not replaced by a run with another nbeta: the message says how to go on."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("run.json", "config.yaml", "state"):
        (shutil.copytree if (finished_run / name).is_dir() else shutil.copy)(finished_run / name, out / name)
    fails_with(write_config(tmp_path / "c.yaml", tiny_lm_dir, out, components=TWO_COMPONENTS, sgld={"nbeta": 60.0}),
               capsys, "holds the results of another run (differs in: sgld); its work would be lost: choose a new "
                       "output directory, or delete this one")
    assert sorted(p.name for p in (out / "state" / "units").iterdir()) == sorted(
        p.name for p in (finished_run / "state" / "units").iterdir())


def test_claim_replaces_a_record_whose_run_left_nothing_and_says_so(tmp_path, capsys):
    """rundir.claim with a ``replaceable`` predicate: its reason is printed, ``scratch`` deleted, the
    new identity recorded; without one (or when it answers None) the directory is refused."""
    claim(tmp_path, {"sgld": 1}, record="run.json", other="another run")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "pilot.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="its work would be lost"):
        claim(tmp_path, {"sgld": 2}, record="run.json", other="another run", replaceable=lambda d: None)
    assert claim(tmp_path, {"sgld": 2}, record="run.json", other="another run", scratch=("state",),
                 replaceable=lambda d: "had finished no unit") == "fresh"
    assert capsys.readouterr().out.strip() == (f"lit-susc: {tmp_path} held an unfinished run with other settings "
                                               "(differs in: sgld) that had finished no unit; replacing it")
    assert json.loads((tmp_path / "run.json").read_text()) == {"sgld": 2} and not (tmp_path / "state").exists()


def test_claim_never_replaces_a_finished_run(tmp_path):
    claim(tmp_path, {"sgld": 1}, record="run.json", other="another run")
    mark_finished(tmp_path, {})
    with pytest.raises(RunDirectoryError, match=r"differs in: sgld"):
        claim(tmp_path, {"sgld": 2}, record="run.json", other="another run", replaceable=lambda d: "left nothing")


# ----------------------------------------------------------------------------- stages that record their identity last


def test_claim_knows_its_own_outputs_their_checksums_and_temporaries_but_not_a_users_record(tmp_path):
    """A stage that writes its record with its outputs (cluster: config.json) may find what a killed
    run of it left; a config.json that is not a record of it is a user's."""
    identity = {"k": 5, "seed": 0}
    write_json(tmp_path / "config.json", {"k": 4, "seed": 0})  # its own record, from a run killed before its marker
    (tmp_path / "labels.parquet").write_bytes(b"")
    (tmp_path / "labels.parquet.sha256").write_text("")
    (tmp_path / "graph.npz.4242.tmp.npz").write_bytes(b"")
    assert claim(tmp_path, identity, record="config.json", other="another clustering", resumable=False,
                 known=("labels.parquet", "graph.npz")) == "fresh"
    (tmp_path / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(RunDirectoryError, match=r"not empty and holds no run of this stage \(config.json"):
        claim(tmp_path, identity, record="config.json", other="another clustering", resumable=False,
              known=("labels.parquet", "graph.npz"))


def _chi_run(directory, n=60, components=4):
    X = np.random.default_rng(0).standard_normal((n, components))
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), components=[f"c{i}" for i in range(components)],
                         convention="seed", nbeta=10.0,
                         tokens=pa.table({"doc_id": np.zeros(n, dtype=np.int64), "position": np.arange(n)})
                         ).save(directory)
    return directory


def test_cluster_refuses_a_directory_of_someone_elses_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    _exits_with_one_error(capsys, ["cluster", "--input_dir", str(_chi_run(tmp_path / "run")), "--output_dir",
                                   str(out), "--k", "8"], "is not empty and holds no run of this stage (config.json)")
    assert (out / "config.json").read_text() == '{"my": "settings"}\n' and len(list(out.iterdir())) == 1


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, "cluster.k must be a whole number >= 1, got 0"),
    ("k", 5, ("cluster.k must be >= 7 with kernel 'gaussian_local', got 5: a point's scale is its distance to its "
              "7th neighbour")),
    ("max_pushes", 0, "cluster.max_pushes must be a whole number >= 1, got 0"),
    ("min_size", -5, "cluster.min_size must be a whole number >= 1, got -5"),
    ("seeds_per_round", 0, "cluster.seeds_per_round must be a whole number >= 1, got 0"),
    ("devices", 0, "cluster.devices must be a whole number >= 1, got 0"),
    ("seed", -1, "cluster.seed must be a whole number >= 0, got -1"),
    ("eps", -1e-7, "cluster.eps must be a finite number > 0, got -1e-07"),
    ("eps", math.nan, "cluster.eps must be a finite number > 0, got nan"),
    ("alpha", 0.0, "cluster.alpha must be a finite number > 0, got 0.0"),
    ("alpha", 1.0, "cluster.alpha must be a finite number < 1, got 1.0: it is the lazy walk's teleport probability"),
    ("alpha", math.inf, "cluster.alpha must be a finite number > 0, got inf"),
    ("max_fraction", 1.5, "cluster.max_fraction must be a finite number <= 1, got 1.5"),
    ("conductance_threshold", 0.0, "cluster.conductance_threshold must be a finite number > 0, got 0.0"),
    ("conductance_threshold", 1.2, "cluster.conductance_threshold must be a finite number <= 1, got 1.2"),
    ("min_variance_ratio", -1e-6, "cluster.min_variance_ratio must be a finite number >= 0, got -1e-06"),
    ("min_variance_ratio", 1.0, "cluster.min_variance_ratio must be a finite number < 1, got 1.0"),
    ("min_pc_reliability", math.nan, "cluster.min_pc_reliability must be a finite number >= 0, got nan"),
])
def test_a_bad_cluster_value_fails_naming_it_and_writes_nothing(tmp_path, capsys, field, value, message):
    run_dir, out = _chi_run(tmp_path / "run"), tmp_path / "out"
    config = write(tmp_path / "cluster.yaml", {"input_dir": str(run_dir), "output_dir": str(out), field: value})
    _exits_with_one_error(capsys, ["cluster", "--config", str(config)], f"lit-susc: error: {message}")
    assert _nothing_written(out) and not (run_dir / "clusters").exists()


@pytest.mark.parametrize("field, value, message", [
    ("alpha", math.nan, "cluster.alpha must be a finite number > 0, got nan"),
    ("accelerator", "tpu", "cluster.accelerator must be one of 'auto', 'cpu', 'gpu', 'cuda', got 'tpu'"),
])
def test_a_cluster_config_set_out_of_range_after_it_was_made_is_refused_by_the_stage(tmp_path, field, value, message):
    """The Python API: a field set after construction is checked when the stage starts, before it reads."""
    from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage

    config = ClusterConfig(input_dir=str(tmp_path / "missing"), output_dir=str(tmp_path / "out"))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_cluster_stage(config, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, "analyse.k must be a whole number >= 1, got 0"),
    ("batch_size", 0, "analyse.batch_size must be a whole number >= 1, got 0"),
    ("max_tokens", 1, "analyse.max_tokens must be a whole number >= 2 or null, got 1"),
    ("seed", -3, "analyse.seed must be a whole number >= 0, got -3"),
])
def test_a_bad_analyse_value_fails_naming_it_and_writes_nothing(tmp_path, capsys, field, value, message):
    """Checked when the settings are read, before the sample run, the aux fit or a model is opened."""
    out = tmp_path / "out"
    config = write(tmp_path / "analyse.yaml", {"sample_dir": str(tmp_path / "run"), "aux_dir": str(tmp_path / "aux"),
                                               "output_dir": str(out), field: value})
    _exits_with_one_error(capsys, ["analyse", "--config", str(config)], f"lit-susc: error: {message}")
    assert _nothing_written(out)


@pytest.mark.parametrize("field, value, message", [
    ("min_reliability", float("nan"), "report.min_reliability must be a finite number >= 0 and <= 1, got nan"),
    ("warn_median_reliability", 1.5, "report.warn_median_reliability must be a finite number >= 0 and <= 1"),
    ("top_tokens", -1, "report.top_tokens must be a whole number >= 0, got -1"),
    ("chi_block_tokens", 0, "report.chi_block_tokens must be a whole number >= 1, got 0"),
])
def test_a_bad_report_value_fails_naming_it_and_writes_nothing(tmp_path, capsys, field, value, message):
    """NaN included: a comparison with NaN is False, so a plain range check would let it through."""
    out = tmp_path / "report"
    config = write(tmp_path / "report.yaml", {"report_dir": str(out), "cluster_dir": str(tmp_path / "c"),
                                              "sample_dir": str(tmp_path / "s"), field: value})
    _exits_with_one_error(capsys, ["report", "--config", str(config)], f"lit-susc: error: {message}")
    assert _nothing_written(out)


@pytest.fixture(scope="module")
def aux_fit(tiny_lm_dir, tmp_path_factory):
    """A sample run over 40 one-context documents and an aux fit of 2 epochs on it (as test_aux_cli)."""
    from lit_susc.aux.cli import main as aux_main

    tmp = tmp_path_factory.mktemp("aux")
    run_sample(tiny_lm_dir, short_documents(tmp / "docs"), tmp / "run", 16, 8)
    config = write(tmp / "fit.yaml", {"trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False},
                                      "sample_dir": str(tmp / "run"), "output_dir": str(tmp / "aux"),
                                      "batch_size": 16, "split": {"val_fraction": 0.25}})
    aux_main(["fit", "--config", str(config)])
    return tmp, config


def test_aux_fit_with_another_max_epochs_is_another_fit(aux_fit, capsys):
    """It used to answer 'nothing to do' and keep the 2-epoch model."""
    tmp, config = aux_fit
    before = (tmp / "aux" / "summary.json").stat().st_mtime_ns
    _exits_with_one_error(capsys, ["aux", "fit", "--config", str(config), "--trainer.max_epochs", "3"],
                          "holds another finished aux fit (differs in: trainer)")
    assert (tmp / "aux" / "summary.json").stat().st_mtime_ns == before


def test_analyse_refuses_a_directory_of_someone_elses_files(aux_fit, tmp_path, capsys):
    tmp, _ = aux_fit
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    _exits_with_one_error(capsys, ["analyse", "--sample_dir", str(tmp / "run"), "--aux_dir", str(tmp / "aux"),
                                   "--output_dir", str(out), "--k", "5"],
                          "is not empty and holds no run of this stage (notes.txt)")
    assert (out / "notes.txt").read_text() == "mine\n" and len(list(out.iterdir())) == 1


def test_report_refuses_a_sample_run_the_aux_model_was_not_fit_on_and_takes_a_moved_one(aux_fit, tiny_lm_dir,
                                                                                      tmp_path, capsys):
    """Another finished sample run of the same model and components, clustered, with the aux fit of the
    first: refused, naming both runs. The fitted run copied elsewhere is still the run it was fit on
    (the digest the real aux fit recorded decides, not the path)."""
    from lit_susc.report.inputs import read_inputs

    tmp, _ = aux_fit
    other = run_sample(tiny_lm_dir, short_documents(tmp_path / "docs"), tmp_path / "other", 16, 4)
    moved = shutil.copytree(tmp / "run", tmp_path / "moved")
    for run_dir in (other, moved):
        run.main(["cluster", "--input_dir", str(run_dir), "--k", "8", "--min_size", "3"])
    out = tmp_path / "report"
    _exits_with_one_error(capsys, ["report", "--cluster_dir", str(other / "clusters"), "--sample_dir", str(other),
                                   "--aux_dir", str(tmp / "aux"), "--report_dir", str(out)],
                          f"lit-susc: error: the aux model in {tmp / 'aux'} was fit on the sampling run {tmp / 'run'}, "
                          f"not on sample_dir {other} (another run); pass sample_dir='{tmp / 'run'}'")
    assert not out.exists()
    assert read_inputs(moved / "clusters", moved, aux_dir=tmp / "aux").sample_dir == moved


# ----------------------------------------------------------------------------- the tiny LM's working directories


def _reuse_copy_of(tiny_lm_dir, tmp_path):
    """A copy of the session's finished tiny-LM directory, and the call that reuses it."""
    out = tmp_path / "tiny"
    shutil.copytree(tiny_lm_dir.parent, out)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    return out, lambda: train_tiny_lm(out, TinyLMConfig(**summary["config"]), source=summary["source"],
                                      progress=False, max_documents=summary["max_documents"])


def test_training_directories_of_killed_runs_are_removed_when_the_model_is_reused(tiny_lm_dir, tmp_path):
    out, reuse = _reuse_copy_of(tiny_lm_dir, tmp_path)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for name in (f".training-{socket.gethostname()}-{ended.pid}-abc123_x", ".training-k2j4h5g6"):  # and an older name
        (out / name / "model").mkdir(parents=True)
        (out / name / "model" / "tokenizer.json").write_text("{}")
    assert reuse() == out / "model"
    assert not list(out.glob(".training-*"))


def test_the_training_directory_of_a_live_process_is_kept(tiny_lm_dir, tmp_path):
    out, reuse = _reuse_copy_of(tiny_lm_dir, tmp_path)
    live = out / f".training-{socket.gethostname()}-{os.getpid()}-abc123_x"
    live.mkdir()
    reuse()
    assert live.is_dir()


@pytest.mark.parametrize("field, value, message", [
    ("min_recall", 0.0, "cluster.min_recall must be a finite number > 0, got 0.0: a recall lies in (0, 1]"),
    ("min_recall", 1.5, "cluster.min_recall must be a finite number <= 1, got 1.5: a recall lies in (0, 1]"),
    ("min_recall", math.nan, "cluster.min_recall must be a finite number > 0, got nan"),
    ("nprobe", 0, "cluster.nprobe must be a whole number >= 1, got 0"),
    ("exact_budget_s", -1.0, "cluster.exact_budget_s must be a finite number >= 0, got -1.0"),
])
def test_a_bad_cluster_knn_setting_fails_naming_it_and_writes_nothing(tmp_path, capsys, field, value, message):
    """The k-NN search's settings (recall floor, IVF cells scanned, auto's budget), as the other cluster values."""
    run_dir, out = _chi_run(tmp_path / "run"), tmp_path / "out"
    config = write(tmp_path / "cluster.yaml", {"input_dir": str(run_dir), "output_dir": str(out), field: value})
    _exits_with_one_error(capsys, ["cluster", "--config", str(config)], f"lit-susc: error: {message}")
    assert _nothing_written(out) and not (run_dir / "clusters").exists()
