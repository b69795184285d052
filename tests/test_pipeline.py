"""``run.py pipeline``: every stage in order, finished stages skipped, reruns from a named stage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from tiny_runs import sample_config, short_documents, write_yaml

import run
from lit_susc.pipeline import STAGES, Pipeline, PipelineConfig

CONTEXT = 16


def _config(tmp, tiny_lm_dir, docs, **changes):
    config = {
        "output_dir": str(tmp / "run"),
        "threads": 1,
        "wandb": {"enabled": True, "mode": "offline"},
        "sample": sample_config(tiny_lm_dir, docs, CONTEXT, observed=12),
        "aux_fit": {"trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False},
                    "batch_size": 16, "split": {"val_fraction": 0.25}},
        "aux_predict": {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
                        "data": {"max_contexts": 48, "batch_size": 8, "shard_contexts": 16}},
        "cluster": {"k": 8, "min_size": 5, "alpha": 1e-2, "eps": 1e-5},
        "analyse": {"k": 5},
        "report": {"examples_per_cluster": 5},
    }
    for section, values in changes.items():
        config[section].update(values)
    return write_yaml(tmp / "pipeline.yaml", config)


def _mtimes(run_dir):
    return {s: os.stat(run_dir / "pipeline" / f"{s}.json").st_mtime_ns for s in STAGES[1:]}


@pytest.fixture(scope="module")
def pipeline(tiny_lm_dir, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pipeline")
    docs = short_documents(tmp / "docs", n=48, chars=60)
    config = _config(tmp, tiny_lm_dir, docs)
    run.main(["pipeline", "--config", str(config)])
    return tmp, docs, config


def test_every_stage_writes_its_directory_and_the_report_opens(pipeline):
    tmp, _, _ = pipeline
    out = tmp / "run"
    for stage in STAGES[1:]:  # a pretrained model: no model stage
        assert json.loads((out / "pipeline" / f"{stage}.json").read_text())["finished"]
        assert (out / "pipeline" / f"{stage}.yaml").exists()
    assert not (out / "model").exists()
    assert (out / "report" / "index.html").exists() and (out / "analyse" / "leak.png").exists()
    predicted = json.loads((out / "aux_predict" / "result.json").read_text())["n_tokens"]
    assert predicted >= 4 * 12 * (CONTEXT - 1)


def test_every_stage_is_a_wandb_run_offline(pipeline):
    tmp, _, _ = pipeline
    runs = list((tmp / "run" / "pipeline" / "wandb").glob("offline-run-*"))
    assert len({p.name.rsplit("-", 1)[-1] for p in runs}) == len(STAGES) - 1  # one run id per stage


def test_finished_stages_are_skipped(pipeline, capsys):
    tmp, _, config = pipeline
    before = _mtimes(tmp / "run")
    run.main(["pipeline", "--config", str(config)])
    out = capsys.readouterr().out
    assert out.count("finished with the same config, skipped") == len(STAGES) - 1
    assert _mtimes(tmp / "run") == before


def test_from_stage_reruns_that_stage_and_the_later_ones_only(pipeline):
    tmp, _, config = pipeline
    before = _mtimes(tmp / "run")
    run.main(["pipeline", "--config", str(config), "--from-stage", "cluster"])
    after = _mtimes(tmp / "run")
    assert [s for s in before if before[s] != after[s]] == ["cluster", "analyse", "report"]


def test_a_stage_computed_again_makes_the_later_finished_ones_stale(pipeline, capsys):
    """As after a killed ``--from-stage cluster``: cluster's record and directory are gone while
    analyse and report still hold results drawn from the old labels. A plain rerun recomputes
    cluster and then both of them (oracle: their records are rewritten; nothing earlier is)."""
    tmp, _, config = pipeline
    out = tmp / "run"
    (out / "pipeline" / "cluster.json").unlink()
    shutil.rmtree(out / "cluster")
    before = {s: os.stat(out / "pipeline" / f"{s}.json").st_mtime_ns for s in ("aux_predict", "analyse", "report")}
    run.main(["pipeline", "--config", str(config)])
    after = {s: os.stat(out / "pipeline" / f"{s}.json").st_mtime_ns for s in before}
    assert [s for s in before if before[s] != after[s]] == ["analyse", "report"]
    assert capsys.readouterr().out.count("the stage before it was computed again since") == 2


def test_a_changed_stage_config_reruns_it_and_the_later_ones(pipeline, tiny_lm_dir):
    tmp, docs, _ = pipeline
    before = _mtimes(tmp / "run")
    run.main(["pipeline", "--config", str(_config(tmp, tiny_lm_dir, docs, analyse={"k": 4}))])
    after = _mtimes(tmp / "run")
    assert [s for s in before if before[s] != after[s]] == ["analyse", "report"]


def test_too_little_upsampling_is_refused_before_anything_runs(tiny_lm_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_lm_dir, tmp_path, aux_predict={"data": {"max_contexts": 10}})
    with pytest.raises(SystemExit) as exit_info:
        run.main(["pipeline", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "max_contexts" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_section_is_an_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: x\nsampel: {}\n")
    with pytest.raises(SystemExit):
        run.main(["pipeline", "--config", str(path)])
    assert "sampel" in capsys.readouterr().err


def _merged(base: dict, change: dict) -> dict:
    return {**base, **{k: _merged(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in change.items()}}


@pytest.mark.parametrize("section,change,message", [
    ("cluster", {"alhpa": 1e-3}, "the cluster section: Option 'alhpa' is not accepted"),
    ("cluster", {"k": 0}, "the cluster section: cluster.k must be a whole number >= 1"),
    ("analyse", {"k": 0}, "the analyse section: analyse.k must be a whole number >= 1"),
    ("report", {"examples_per_cluster": "many"}, "the report section: examples_per_cluster"),
    ("aux_fit", {"model": {"l1": "strong"}}, "the aux_fit section: model"),
    ("sample", {"model": {"sgld": {"lr": -1e-3}}}, "the sample section: sgld.lr must be a finite number > 0"),
])
def test_a_bad_field_in_any_section_is_refused_before_the_first_stage(tiny_lm_dir, tmp_path, capsys, section, change,
                                                                      message):
    """Every section is parsed by its stage's types and its settings built (their own checks) before
    anything runs: nothing is written, and the message names the section and the field."""
    docs = short_documents(tmp_path / "docs", n=8, chars=60)
    config = yaml.safe_load(_config(tmp_path, tiny_lm_dir, docs).read_text())
    config[section] = _merged(config[section], change)
    path = write_yaml(tmp_path / "bad.yaml", config)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["pipeline", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-susc: error:") and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,message", [
    ("output_dir: x\nsample: {model: [\n", "is not valid YAML at line 3"),
    ("output_dir: null\n", "output_dir must be a directory path, got None"),
    ("output_dir: {file}\n", "is a file, not a directory"),
])
def test_a_broken_pipeline_config_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "a-file").write_text("mine")
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("{file}", str(tmp_path / "a-file")))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["pipeline", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-susc: error:") and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_threads_set_every_stage_process_and_nothing_else(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("output_dir: x\nthreads: 1\n")
    env = Pipeline(PipelineConfig.from_yaml(path)).stage_env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    path.write_text("output_dir: x\nthreads: null\n")
    env = Pipeline(PipelineConfig.from_yaml(path)).stage_env()
    assert env.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")


@pytest.mark.parametrize(("cores", "environment", "expected"), [(2, None, "1"), (4, None, "1"), (8, None, None),
                                                                 (2, "3", "3")])
def test_auto_threads_is_one_on_a_small_machine_unless_the_environment_says(tmp_path, monkeypatch, cores,
                                                                            environment, expected):
    """The default: a machine of at most 4 cores is usually shared, where one thread per process is fastest."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if environment is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", environment)
    path = tmp_path / "p.yaml"
    path.write_text("output_dir: x\n")
    config = PipelineConfig.from_yaml(path)
    assert config.threads == "auto"
    assert Pipeline(config).stage_env().get("OMP_NUM_THREADS") == expected


@pytest.mark.parametrize("threads", ["0", "two", "1.5"])
def test_a_bad_thread_count_is_an_error(tmp_path, capsys, threads):
    path = tmp_path / "bad.yaml"
    path.write_text(f"output_dir: x\nthreads: {threads}\n")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["pipeline", "--config", str(path)])
    assert exit_info.value.code == 2
    assert "threads" in capsys.readouterr().err


def test_process_count_and_progress_bars_do_not_invalidate_a_rank_invariant_stage(tmp_path):
    """Oracle: sample and aux_predict give the same outputs on any number of ranks (the DDP tests),
    so their fingerprints ignore devices/strategy and progress bars, and a finished or half-done
    sample is resumed, not recomputed, when a run moves to 2 processes; aux_fit's data-parallel
    training does depend on the process count, so its fingerprint does not ignore it."""
    def fingerprints(sample_trainer: str, aux_trainer: str) -> dict[str, str]:
        path = tmp_path / "p.yaml"
        path.write_text(f"output_dir: x\nsample:\n  trainer: {sample_trainer}\n  model: {{pretrained: m}}\n"
                        f"aux_fit:\n  trainer: {aux_trainer}\n")
        pipeline = Pipeline(PipelineConfig.from_yaml(path))
        return {stage: pipeline.fingerprint(stage) for stage in ("sample", "aux_fit")}

    one = fingerprints("{devices: 1}", "{devices: 1}")
    assert fingerprints("{devices: 2, strategy: ddp, enable_progress_bar: false}", "{devices: 1}") == one
    assert fingerprints("{devices: 1, accelerator: cpu}", "{devices: 1}")["sample"] != one["sample"]
    assert fingerprints("{devices: 1}", "{devices: 2}")["aux_fit"] != one["aux_fit"]


def test_the_pipeline_runs_on_a_grouped_query_llama(tiny_llama_dir, tmp_path):
    """Every stage on a Llama-family model, whose kv groups are components of their own (oracle:
    the adapter's component list, and each stage's finished record)."""
    torch.set_num_threads(1)
    docs = short_documents(tmp_path / "docs", n=48, chars=60)
    # wandb off: its logging of every stage is tested on the GPT-NeoX pipeline, and costs seconds a stage
    run.main(["pipeline", "--config", str(_config(tmp_path, tiny_llama_dir, docs, wandb={"enabled": False}))])
    out = tmp_path / "run"
    for stage in STAGES[1:]:
        assert json.loads((out / "pipeline" / f"{stage}.json").read_text())["finished"]
    components = json.loads((out / "sample" / "result.json").read_text())["components"]
    assert components[:7] == [*(f"layers.0.heads.{h}" for h in range(4)), "layers.0.kv.0", "layers.0.kv.1",
                              "layers.0.mlp"]
    assert (out / "report" / "index.html").exists()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_pipeline_ends_its_running_stage(tiny_lm_dir, tmp_path, how):
    """SIGTERM is passed on to the stage's process group; after SIGKILL the stage gets SIGTERM from
    the kernel (PR_SET_PDEATHSIG). Oracle: the stage's process (its pid is in the pipeline's record)
    is gone within seconds, so no orphan keeps writing the directory."""
    docs = short_documents(tmp_path / "docs", n=48, chars=60)
    config = _config(tmp_path, tiny_lm_dir, docs, sample={**sample_config(tiny_lm_dir, docs, CONTEXT, observed=12)})
    slow = yaml.safe_load(config.read_text())
    slow["sample"]["model"]["sgld"]["draws"] = 100_000  # the stage is still running when the pipeline is killed
    write_yaml(config, slow)
    parent = subprocess.Popen([sys.executable, run.__file__, "pipeline", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = tmp_path / "run" / "pipeline" / "sample.json"
    deadline = time.time() + 120
    while not (record.exists() and "pid" in json.loads(record.read_text())):
        assert parent.poll() is None and time.time() < deadline, parent.stderr.read() if parent.poll() else "timeout"
        time.sleep(0.2)
    stage = json.loads(record.read_text())["pid"]
    time.sleep(3)  # into the stage's start-up (it sets PR_SET_PDEATHSIG first, or sees its parent gone)
    parent.send_signal(how)
    code = parent.wait(timeout=60)
    deadline = time.time() + 60
    while _alive(stage):
        assert time.time() < deadline, f"stage process {stage} outlived the pipeline"
        time.sleep(0.2)
    if how == signal.SIGTERM:
        assert code == 2 and "stopped by SIGTERM during stage sample" in parent.stderr.read()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init to reap it has ended
        return f.read().split(") ", 1)[1][0] != "Z"


def test_load_run_reads_every_stage_of_a_finished_pipeline(pipeline):
    """Oracle: each stage's own reader (SusceptibilityResult.load, the cluster's Parquet files, read_chi
    of the predictions)."""
    import pyarrow.parquet as pq

    from lit_susc import SusceptibilityResult, load_run, read_chi

    tmp, _, _ = pipeline
    out = tmp / "run"
    run_ = load_run(out)
    sample = SusceptibilityResult.load(out / "sample")
    assert torch.equal(run_.chi, sample.chi) and torch.equal(run_.chi_se, sample.chi_se)
    assert run_.components == sample.components and run_.tokens.equals(sample.tokens)
    assert run_.llc == sample.llc and run_.reliability == sample.reliability
    assert set(run_.diagnostics) == set(sample.components)
    assert run_.labels.equals(pq.read_table(out / "cluster" / "labels.parquet"))
    assert run_.clusters.num_rows == pq.read_table(out / "cluster" / "clusters.parquet").num_rows
    assert torch.equal(run_.predicted_chi(0, 50), read_chi(out / "aux_predict", 0, 50))
    assert run_.leak.num_rows > 0 and run_.report == out / "report" / "index.html"
    assert all(run_.finished[s] for s in STAGES[1:]) and not run_.finished["model"]


def test_load_run_of_a_directory_without_a_sampling_run_says_what_to_run(tmp_path):
    from lit_susc import load_run

    with pytest.raises(FileNotFoundError, match="Run the pipeline"):
        load_run(tmp_path)
