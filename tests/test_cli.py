"""``python run.py sample`` end to end on a tiny local model, and its errors on bad input."""

import json
import time

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import run
from lit_susc import SusceptibilityResult, read_chi

SGLD = {"lr": 1e-4, "nbeta": 50.0, "localization": 300.0, "chains": 2, "draws": 4, "burn_in": 2,
        "steps_between_draws": 1}
DATA = {"context_length": 16, "observation_contexts": 4, "sampling_contexts": 8, "batch_size": 4,
        "max_documents": 30}


def write_config(path, model_dir, output_dir, components=("layers.0.*", "embed", "unembed"), data=None,
                 sgld=None, **model_extra):
    config = {
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "model": {"pretrained": str(model_dir), "components": list(components), "data": {**DATA, **(data or {})},
                  "sgld": {**SGLD, **(sgld or {})}, "output_dir": str(output_dir), "shard_tokens": 40,
                  **model_extra},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def sample(config_path):
    run.main(["sample", "--config", str(config_path)])


def fails_with(config_path, capsys, pattern):
    with pytest.raises(SystemExit) as exit_info:
        sample(config_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit-susc: error:" in err
    assert pattern in err, err
    return err


@pytest.fixture(scope="module")
def finished_run(tiny_lm_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "run"
    sample(write_config(tmp / "config.yaml", tiny_lm_dir, out))
    return tmp, out


def test_sample_writes_chi_tokens_llc_config_and_traces(finished_run):
    _, out = finished_run
    res = SusceptibilityResult.load(out)
    n_tokens = DATA["observation_contexts"] * (DATA["context_length"] - 1)
    assert res.components == ["layers.0.heads.0", "layers.0.heads.1", "layers.0.mlp", "embed", "unembed"]
    assert res.chi.shape == (5, DATA["observation_contexts"], DATA["context_length"] - 1)
    assert torch.isfinite(res.chi).all() and (res.chi != 0).any()
    assert res.tokens.num_rows == n_tokens
    assert set(json.loads((out / "llc.json").read_text())) == set(res.components)
    traces = pq.read_table(out / "traces.parquet")
    assert traces.num_rows == 5 * SGLD["chains"] * (SGLD["burn_in"] + SGLD["draws"])
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["sgld"]["nbeta"] == 50.0
    assert json.loads((out / "result.json").read_text())["convention"] == "seed"


def test_chi_is_sharded_and_read_back_lazily(finished_run):
    _, out = finished_run
    meta = json.loads((out / "result.json").read_text())
    assert len(meta["shards"]) == 2  # 60 tokens, 40 per shard
    full = SusceptibilityResult.load(out).chi.reshape(5, -1)
    assert torch.equal(read_chi(out, 30, 50), full[:, 30:50])


def test_rerunning_a_finished_run_does_nothing(finished_run, capsys):
    tmp, out = finished_run
    before = (out / "summary.json").stat().st_mtime_ns
    sample(tmp / "config.yaml")
    assert "already holds this run's finished results" in capsys.readouterr().out
    assert (out / "summary.json").stat().st_mtime_ns == before


def test_an_output_directory_with_another_runs_results_is_refused(finished_run, tiny_lm_dir, tmp_path, capsys):
    _, out = finished_run
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, out, sgld={"nbeta": 60.0})
    fails_with(config, capsys, "holds the results of another run (differs in: sgld)")


def test_unknown_component_pattern_lists_what_exists(tiny_lm_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", components=["layers.7.mlp"])
    fails_with(config, capsys, "matches no component; available: layers.0.heads.0")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_context_longer_than_the_model_accepts(tiny_lm_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", data={"context_length": 64})
    fails_with(config, capsys, "longer than the model accepts")


def test_empty_data_source(tiny_lm_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", data={"source": str(tmp_path / "empty.txt")})
    fails_with(config, capsys, "held no documents")


def test_a_diverging_chain_names_component_chain_and_step(tiny_lm_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, out, components=["unembed"],
                          sgld={"lr": 10.0, "localization": 0.0})
    err = fails_with(config, capsys, "chain 0 of component 'unembed' diverged at step")
    assert "Lower the lr or raise the localization" in err
    assert not (out / "summary.json").exists() and not (out / "chi").exists()


def test_a_non_finite_loss_at_w_star(tiny_lm_dir, tmp_path, capsys):
    from lit_susc.tinylm import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_lm_dir))
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    tokenizer.save_pretrained(tmp_path / "broken")
    config = write_config(tmp_path / "c.yaml", tmp_path / "broken", tmp_path / "out")
    fails_with(config, capsys, "reference loss at w* is nan")


def test_print_config_shows_the_resolved_configuration(tiny_lm_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["sample", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["sgld"]["convention"] == "seed"
    assert printed["model"]["data"]["context_length"] == 16


def test_wandb_logger_records_the_chains_offline(tiny_lm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", components=["embed"])
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                "init_args": {"save_dir": str(tmp_path), "project": "lit-susc-test"}}
    cfg["trainer"]["log_every_n_steps"] = 1
    config.write_text(yaml.safe_dump(cfg))
    sample(config)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, "no offline wandb run was written"
    # The run's protobuf records (metric names in clear), flushed by wandb's service process.
    deadline = time.time() + 60
    while b"sgld/phi" not in runs[0].read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    records = runs[0].read_bytes()
    assert b"sgld/loss" in records and b"sgld/phi" in records


def test_changed_weights_under_the_same_path_are_another_run(tiny_lm_dir, tmp_path, capsys):
    import shutil

    from lit_susc.tinylm import load_causal_lm

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model_dir)
    config = write_config(tmp_path / "c.yaml", model_dir, tmp_path / "out", components=["embed"])
    sample(config)
    model, _tokenizer = load_causal_lm(str(model_dir))
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.add_(0.01)
    model.save_pretrained(model_dir)
    fails_with(config, capsys, "differs in: model_digest")


def test_top_level_help_lists_every_subcommand(capsys):
    """``lit-susc --help`` names every subcommand run.py dispatches (its own parsers and LightningCLI's
    sample and bif), so none is hidden behind another's help."""
    import run

    run.main(["--help"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed == set(run.COMMANDS) | {"sample", "bif"}


def test_an_unknown_subcommand_is_one_error_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["smaple", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-susc: error: unknown subcommand 'smaple'") and "sample" in err


def test_a_subcommands_help_is_titled_with_it(capsys):
    with pytest.raises(SystemExit):
        run.main(["bif", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: lit-susc bif") and "--model.data" in out


@pytest.mark.parametrize("first", ["callbacks.llc", "lit_susc.covariance"])  # each imports its package first
def test_lit_susc_and_callbacks_import_in_either_order(first):
    """The engine runs the callbacks and the callbacks use lit_susc's core: a fresh interpreter
    imports either package first (no lazy attribute hides a half-initialised module)."""
    import subprocess
    import sys

    code = f"import {first}; import callbacks, lit_susc; lit_susc.estimate_susceptibilities; callbacks.LLCCallback"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_two_devices_without_a_strategy_sample_independent_chains(tiny_lm_dir, tmp_path, finished_run):
    """``--trainer.devices 2`` alone (Lightning would pick plain DDP, which averages gradients and
    refuses the frozen parameters) runs two independent-chains processes; oracle: the one-process
    run of the same config (chi equal to float rounding)."""
    import os
    import subprocess
    import sys

    path = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out")
    proc = subprocess.run([sys.executable, run.__file__, "sample", "--config", str(path), "--trainer.devices", "2"],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = SusceptibilityResult.load(tmp_path / "out"), SusceptibilityResult.load(finished_run[1])
    torch.testing.assert_close(two.chi, one.chi, rtol=1e-6, atol=1e-9)


def test_two_processes_on_a_grouped_query_llama_equal_one(tiny_llama_dir, tmp_path):
    """DDP of independent chains on a Llama with key/value groups; oracle: the one-process run
    (chi and the LLCs equal to float rounding)."""
    import os
    import subprocess
    import sys

    sample(write_config(tmp_path / "one.yaml", tiny_llama_dir, tmp_path / "one"))
    path = write_config(tmp_path / "two.yaml", tiny_llama_dir, tmp_path / "two")
    proc = subprocess.run([sys.executable, run.__file__, "sample", "--config", str(path), "--trainer.devices", "2"],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = SusceptibilityResult.load(tmp_path / "one"), SusceptibilityResult.load(tmp_path / "two")
    assert "layers.0.kv.1" in one.components and two.components == one.components
    torch.testing.assert_close(two.chi, one.chi, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(two.chi_se, one.chi_se, rtol=1e-6, atol=1e-9)
    for c in one.components:
        assert abs(two.llc[c]["mean"] - one.llc[c]["mean"]) <= 1e-6 * abs(one.llc[c]["mean"])


def test_the_command_line_shows_component_chain_and_draw_and_no_lightning_noise(tiny_lm_dir, tmp_path):
    """Oracle: the text a user sees: the bar is titled by round and names the component, chains and
    draw; Lightning's tip and its warnings about eval mode and LeafSpec are gone."""
    import os
    import subprocess
    import sys

    path = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", components=("layers.0.mlp",))
    proc = subprocess.run([sys.executable, run.__file__, "sample", "--config", str(path),
                           "--trainer.enable_progress_bar", "true"], check=False, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    assert "round 1/1" in shown and "component=layers.0.mlp" in shown and "draw=4/4" in shown
    for noise in ("Tip:", "in eval mode", "LeafSpec"):
        assert noise not in shown, noise


def test_a_second_sample_into_a_directory_being_written_is_refused(tiny_lm_dir, tmp_path, capsys):
    """Two processes never write one run directory (oracle: the first process's pid in the refusal;
    without the lock both would compute every unit)."""
    import os
    import signal
    import subprocess
    import sys

    path = write_config(tmp_path / "c.yaml", tiny_lm_dir, tmp_path / "out", sgld={"draws": 100_000})
    first = subprocess.Popen([sys.executable, run.__file__, "sample", "--config", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "out" / "run.json").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        fails_with(path, capsys, f"is being written by process {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
