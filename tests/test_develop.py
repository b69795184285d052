"""``run.py develop``: one sample run per training checkpoint, and their comparison (lit_susc.development).

Oracles: separate ``run.py sample`` runs of the same checkpoints (bitwise); the same run killed
after its first checkpoint and resumed (bitwise); the PCA of the stacked matrix by numpy's SVD;
the half-normal median for a change that is only noise; Aoyagi's learning coefficients of
reduced-rank regressions of growing true rank standing in for checkpoints.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from reduced_rank import N, loss_fn
from tiny_runs import short_documents, write_yaml
from torch import nn

import run
from lit_susc import SGLDConfig, estimate_susceptibilities
from lit_susc.development import NOISE_CHANGE, Development, chi_change, development, joint_pca, token_class
from lit_susc.result import SusceptibilityResult, read_chi
from lit_susc.tinylm import checkpoint_dir

STEPS = [0, 10, 20]
SAMPLE_MODEL = {"components": ["layers.0.heads.0", "layers.1.mlp", "unembed"],
                "sgld": {"lr": 1e-4, "nbeta": 50.0, "chains": 2, "draws": 4, "burn_in": 2}}


def _data(source: Path) -> dict:
    return {"source": str(source), "context_length": 16, "observation_contexts": 2, "sampling_contexts": 4,
            "batch_size": 4}


def _develop_config(out: Path, source: Path, **fields) -> dict:
    return {"output_dir": str(out), "threads": 1,
            "sample": {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
                       "model": {"pretrained": None, "data": _data(source), **SAMPLE_MODEL,
                                 "tiny_lm": {"vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                             "intermediate_size": 64, "context_length": 16, "train_steps": 20,
                                             "batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "eval_contexts": 8,
                                             "checkpoints": STEPS}}},
            **fields}


@pytest.fixture(scope="module")
def developed(tmp_path_factory):
    """A develop run of the tiny LM trained here, saved at steps 0, 10 and 20: (its directory, source)."""
    base = tmp_path_factory.mktemp("develop")
    source = short_documents(base / "docs", n=40, chars=80)
    out = base / "run"
    run.main(["develop", "--config", str(write_yaml(base / "develop.yaml", _develop_config(out, source)))])
    return out, source


def _local_checkpoints(out: Path, steps=STEPS) -> list[dict]:
    return [{"step": s, "pretrained": str(checkpoint_dir(out / "model", s))} for s in steps]


def _chi_and_llc(run_dir: Path):
    return read_chi(run_dir), json.loads((run_dir / "llc.json").read_text())


def test_develop_equals_separate_sample_runs(developed, tmp_path):
    out, source = developed
    for step in STEPS:
        model = {"pretrained": str(checkpoint_dir(out / "model", step)), "data": _data(source), **SAMPLE_MODEL,
                 "output_dir": str(tmp_path / f"step{step}")}
        config = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False}, "model": model}
        run.main(["sample", "--config", str(write_yaml(tmp_path / f"step{step}.yaml", config))])
        alone, chi_alone = _chi_and_llc(tmp_path / f"step{step}")
        together, llc_together = _chi_and_llc(out / "checkpoints" / f"step{step:08d}")
        assert torch.equal(alone, together)
        assert chi_alone == llc_together


def test_development_tables_cover_every_checkpoint_and_component(developed):
    out, _ = developed
    dev = Development.load(out / "development")
    assert dev.steps == STEPS
    rows = dev.per_component.to_pylist()
    assert [(r["step"], r["component"]) for r in rows] == [(s, c) for s in STEPS for c in SAMPLE_MODEL["components"]]
    for r in rows:
        result = SusceptibilityResult.load(out / "checkpoints" / f"step{r['step']:08d}")
        llc = result.llc[r["component"]]
        assert r["llc"] == llc["mean"]
        assert r["llc_se"] == pytest.approx(llc["std"] / math.sqrt(len(llc["per_chain"])))
    assert dev.changes.num_rows == (len(STEPS) - 1) * len(SAMPLE_MODEL["components"])
    assert dev.trajectories.num_rows == len(STEPS) * 2 * 15
    for figure in ("index.html", "llc_curves.png", "llc_heads.png", "trajectories.png", "changes.png"):
        assert (out / "development" / figure).stat().st_size > 0


def test_a_finished_develop_run_is_skipped(developed, capsys):
    out, _ = developed
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("summary.json")}
    run.main(["develop", "--config", str(out.parent / "develop.yaml")])
    printed = capsys.readouterr().out
    assert printed.count("finished with the same config, skipped") == len(STEPS)
    assert "already compares these runs" in printed
    assert before == {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("summary.json")}


def test_develop_killed_after_its_first_checkpoint_resumes_to_the_same_results(developed, tmp_path):
    out, source = developed
    steps = STEPS[:2]  # the kill comes after the first; one more shows the rest resumes
    config = _develop_config(tmp_path / "run", source, checkpoints=_local_checkpoints(out, steps))
    path = write_yaml(tmp_path / "develop.yaml", config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(run.__file__)), "develop", "--config", str(path)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "run" / "checkpoints" / f"step{steps[0]:08d}" / "summary.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (tmp_path / "run" / "development" / "summary.json").exists()
    run.main(["develop", "--config", str(path)])
    for step in steps:
        name = f"step{step:08d}"
        assert torch.equal(read_chi(tmp_path / "run" / "checkpoints" / name), read_chi(out / "checkpoints" / name))
    resumed, original = Development.load(tmp_path / "run" / "development"), Development.load(out / "development")
    assert resumed.steps == steps
    assert resumed.per_component.equals(original.per_component.filter(pc.field("step") <= steps[-1]))


def _refused(capsys, config_path: Path, *words: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(["develop", "--config", str(config_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-susc: error:"), err
    for word in words:
        assert word in err[0], err[0]


def test_a_missing_checkpoint_is_refused_before_anything_runs(developed, tmp_path, capsys):
    out, source = developed
    checkpoints = [*_local_checkpoints(out, [0]), {"step": 5, "pretrained": str(tmp_path / "no-such-model")}]
    path = write_yaml(tmp_path / "d.yaml", _develop_config(tmp_path / "run", source, checkpoints=checkpoints))
    _refused(capsys, path, "step 5", "no-such-model")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_runs(developed, tiny_llama_dir, tmp_path,
                                                                               capsys):
    out, source = developed
    checkpoints = [*_local_checkpoints(out, [0]), {"step": 5, "pretrained": str(tiny_llama_dir)}]
    path = write_yaml(tmp_path / "d.yaml", _develop_config(tmp_path / "run", source, checkpoints=checkpoints))
    _refused(capsys, path, "step 5", "another architecture")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("fields", "words"), [
    ({"checkpoints": [{"step": 3, "revision": "a"}, {"step": 3, "revision": "b"}]}, ("step 3", "more than once")),
    ({"checkpoints": [{"step": -1, "revision": "a"}]}, ("step", ">= 0")),
    ({"checkpoints": [{"step": 1, "branch": "a"}]}, ("branch",)),
    ({"checkpoints": []}, ("empty",)),
    ({"n_pcs": 0}, ("n_pcs",)),
    ({"calibrate": {"grid": {"lr": [1e-3]}, "rules": {}}}, ("rules",)),
])
def test_bad_develop_settings_are_one_line(tmp_path, capsys, fields, words):
    config = _develop_config(tmp_path / "run", tmp_path, **fields)
    if fields.get("checkpoints"):
        config["sample"]["model"]["pretrained"] = "EleutherAI/pythia-14m"
    _refused(capsys, write_yaml(tmp_path / "d.yaml", config), *words)
    assert not (tmp_path / "run").exists()


def test_print_config_shows_each_checkpoints_sample_config(tmp_path, capsys):
    config = _develop_config(tmp_path / "run", tmp_path)
    run.main(["develop", "--config", str(write_yaml(tmp_path / "d.yaml", config)), "--print_config"])
    printed = capsys.readouterr().out
    for step in STEPS:
        assert f"step{step:08d}" in printed
    assert not (tmp_path / "run").exists()


# -- lit_susc.development on known inputs ------------------------------------------------------


def test_joint_pca_is_the_pca_of_every_checkpoints_rows_stacked_and_standardised():
    g = torch.Generator().manual_seed(0)
    chis = [torch.randn(5, 200, generator=g, dtype=torch.float64) * torch.arange(1, 6.0)[:, None] + k
            for k in range(3)]
    pca = joint_pca(chis, n_pcs=3)
    stacked = torch.cat([c.T for c in chis]).numpy()
    centred = (stacked - stacked.mean(0)) / stacked.std(0, ddof=1)  # each component standardised
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(pca.variances.numpy(), s ** 2 / (len(stacked) - 1), rtol=1e-10)
    np.testing.assert_allclose(np.abs(pca.basis.numpy()), np.abs(vt[:3]), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.abs(pca.scores(chis[1]).numpy()),
                               np.abs(centred[200:400] @ vt[:3].T), rtol=1e-8, atol=1e-10)


def test_a_change_that_is_only_noise_is_the_half_normal_median():
    g = torch.Generator().manual_seed(0)
    chi = torch.randn(3, 1, generator=g, dtype=torch.float64) * torch.ones(3, 20000, dtype=torch.float64)
    se = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)[:, None].expand(3, 20000)
    a = chi + se * torch.randn(3, 20000, generator=g, dtype=torch.float64)
    b = chi + se * torch.randn(3, 20000, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(chi_change(a, se, b, se)["change"], NOISE_CHANGE, rtol=0.03)
    # a shift of 10 SE of each side: 10 / sqrt(2) SE of the difference
    np.testing.assert_allclose(chi_change(a, se, b + 10 * se, se)["change"], 10 / math.sqrt(2), rtol=0.03)


def test_development_refuses_runs_that_observed_different_tokens():
    make = lambda n: SusceptibilityResult(chi=torch.zeros(2, n, dtype=torch.float64), components=["a", "b"],
                                          convention="seed", nbeta=1.0)
    with pytest.raises(ValueError, match="same tokens"):
        development([make(4), make(5)], [0, 1])
    with pytest.raises(ValueError, match="ascending"):
        development([make(4), make(4)], [1, 0])


@pytest.mark.parametrize(("text", "cls"), [(" ", "space"), ("\n  ", "newline"), ("42", "digit"), ("):", "punctuation"),
                                           (" def", "word start"), ("ing", "word piece"), ("x1", "other")])
def test_token_class(text, cls):
    assert token_class(text) == cls


def _aoyagi(m: int, h: int, n: int, r: int) -> float:
    """The learning coefficient of the (m, h, n) reduced-rank regression at a true parameter of rank r
    (Aoyagi and Watanabe 2005)."""
    if n + r > m + h:
        return (h * m - h * r + n * r) / 2
    if m + r > n + h:
        return (h * n - h * r + m * r) / 2
    if h + r > m + n:
        return m * n / 2
    return (2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + (1 if (m + h + n + r) % 2 else 0)) / 8


def test_llc_curve_follows_reduced_rank_regressions_of_growing_rank(one_thread, tmp_path):
    """Checkpoints stand-in: the (8, 3, 4) regression at a true parameter of rank r = 0, 1, 2, 3, the data
    drawn from it; the LLC curve over 'steps' r follows Aoyagi's 6, 8.5, 11, 13.5 within 20%."""
    m, h, n = 8, 3, 4
    results, expected = [], []
    for r in range(h + 1):
        g = torch.Generator().manual_seed(r)
        a, b = torch.zeros(h, m), torch.zeros(n, h)
        a[:r], b[:, :r] = torch.randn(r, m, generator=g), torch.randn(n, r, generator=g)
        X = torch.randn(N, m, generator=g)
        Y = X @ (b @ a).T + torch.randn(N, n, generator=g)
        model = nn.Sequential(nn.Linear(m, h, bias=False), nn.Linear(h, n, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(a)
            model[1].weight.copy_(b)
        # lr 3e-4: at a true parameter of rank r > 0 the loss is curved along it, and 1e-3 (test_learning_coefficient's,
        # at w* = 0) overshoots it, inflating the LLC by 50%
        sgld = SGLDConfig(lr=3e-4, nbeta=N / math.log(N), localization=1.0, chains=4, draws=300, burn_in=300,
                          steps_between_draws=2, seed=0)
        batches = [(X[i:i + 100], Y[i:i + 100]) for i in range(0, N, 100)]
        results.append(estimate_susceptibilities(model, loss_fn, batches, [(X[:8], Y[:8])], sgld=sgld,
                                                 reference_data=(X, Y), run_dir=tmp_path / f"rank{r}",
                                                 trainer={"accelerator": "cpu", "enable_progress_bar": False}))
        expected.append(_aoyagi(m, h, n, r))
    assert expected == [6.0, 8.5, 11.0, 13.5]
    llc, _ = development(results, list(range(h + 1))).llc("all")
    np.testing.assert_allclose(llc, expected, rtol=0.2)


def test_the_development_is_logged_to_wandb_offline(developed, tmp_path):
    """One wandb run ``<group>/development`` with the LLC of every component at every training step."""
    from lit_susc.pipeline import WandbConfig
    from lit_susc.tracking import log_development

    out, _ = developed
    dev = Development.load(out / "development")
    (tmp_path / "develop").mkdir()
    log_development(WandbConfig(enabled=True, mode="offline"), tmp_path, dev, out / "development")
    runs = list((tmp_path / "develop" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    history = runs[0].read_bytes()
    assert all(f"llc/{c}".encode() in history for c in SAMPLE_MODEL["components"])


def test_a_calibrated_checkpoint_samples_with_its_own_recommendation_and_records_it(developed, tmp_path):
    """The calibration's own run is ``run.py calibrate`` (tests/test_calibrate.py); here its finished
    result, made for this checkpoint's config, is what the checkpoint's sample config takes."""
    import yaml

    from lit_susc.develop import Develop, DevelopConfig
    from lit_susc.rundir import mark_finished

    out, source = developed
    calibrate = {"grid": {"lr": [1e-4, 2e-4]}, "model": {"sgld": {"draws": 3}}}
    config = DevelopConfig.from_yaml(write_yaml(tmp_path / "d.yaml", _develop_config(
        tmp_path / "run", source, checkpoints=_local_checkpoints(out, [0]), calibrate=calibrate)))
    develop = Develop(config)
    develop.check()
    (checkpoint,) = develop.checkpoints
    cal = develop.calibration_config(checkpoint)
    assert cal["model"]["pretrained"] == str(checkpoint_dir(out / "model", 0))
    assert cal["model"]["sgld"]["draws"] == 3 and cal["model"]["sgld"]["chains"] == SAMPLE_MODEL["sgld"]["chains"]
    assert cal["trainer"]["devices"] == 1
    develop.state_dir.mkdir(parents=True)
    (develop.state_dir / f"{checkpoint.name}.calibrate.yaml").write_text(yaml.safe_dump(cal, sort_keys=False))
    best = {"lr": 2e-4, "nbeta": 50.0, "localization": 300.0, "chains": 2}
    mark_finished(develop.calibration_dir(checkpoint), {"best": best})
    assert develop._calibrate(checkpoint) == {"lr": 2e-4, "nbeta": 50.0, "localization": 300.0}
    mark_finished(develop.calibration_dir(checkpoint), {"best": None})
    with pytest.raises(ValueError, match="found no qualifying setting"):
        develop._calibrate(checkpoint)
    sgld = develop.sample_config(checkpoint, {"lr": 2e-4})["model"]["sgld"]
    assert sgld["lr"] == 2e-4 and sgld["draws"] == SAMPLE_MODEL["sgld"]["draws"]
