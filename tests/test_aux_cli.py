"""``aux fit`` then ``aux predict`` on a tiny finished run, end to end, and their errors on bad input."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_runs import run_sample, short_documents
from tiny_runs import write_yaml as write

from lit_susc import read_chi
from lit_susc.aux import AuxBundle, PCABasis, read_pcs, read_tokens
from lit_susc.aux.cli import main as aux_main
from lit_susc.rundir import write_json, write_parquet, write_safetensors

CONTEXT, OBSERVED = 16, 8
PREDICT = {"batch_size": 2, "shard_contexts": 3, "max_contexts": 10}


@pytest.fixture(scope="module")
def work(tiny_lm_dir, tmp_path_factory):
    """A sample run over 40 short documents (about one context each), then aux fit and aux predict on it."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("aux")
    docs = short_documents(tmp / "docs")
    run_sample(tiny_lm_dir, docs, tmp / "run", CONTEXT, OBSERVED)
    aux_main(["fit", "--config", str(fit_config(tmp / "fit.yaml", tmp / "run", tmp / "aux"))])
    aux_main(["predict", "--config", str(predict_config(tmp / "predict.yaml", tmp / "aux", tmp / "pred", docs))])
    return tmp


def fit_config(path, run_dir, out, **extra):
    return write(path, {"trainer": {"accelerator": "cpu", "max_epochs": 3, "enable_progress_bar": False},
                        "sample_dir": str(run_dir), "output_dir": str(out), "batch_size": 16,
                        "split": {"val_fraction": 0.25}, **extra})


def predict_config(path, aux_dir, out, source, **extra):
    return write(path, {"trainer": {"accelerator": "cpu", "enable_progress_bar": False}, "aux_dir": str(aux_dir),
                        "output_dir": str(out), "data": {"source": str(source), **PREDICT}, **extra})


def test_fit_writes_weights_pca_normalization_report_and_plot(work):
    aux = work / "aux"
    for name in ("aux_model.safetensors", "pca.safetensors", "normalization.safetensors", "aux.json", "pearson.png",
                 "config.yaml", "summary.json"):
        assert (aux / name).exists(), name
    meta = json.loads((aux / "aux.json").read_text())
    assert meta["n_pcs"] == 8 and meta["hidden"] == 16 * 8 and meta["layers"] == [1, 2]
    assert len(meta["pearson"]) == 8 and len(meta["ridge"]["pearson"]) == 8
    assert set(meta["base_model"]) == {"pretrained", "revision", "config_hash", "weights"}
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == OBSERVED * (CONTEXT - 1)
    assert not [p for p in work.rglob("*") if p.suffix in {".ckpt", ".pt", ".pkl"}]  # nothing pickled


def test_fit_logs_the_mean_validation_pearson_every_epoch(work):
    metrics = (work / "aux" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert "val/pearson_mean" in header and "val/pearson_pc7" in header
    column = header.index("val/pearson_mean")
    assert sum(1 for row in metrics[1:] if row.split(",")[column]) == 3 + 1  # 3 epochs + the final validation


def test_a_finished_fit_is_kept_and_another_one_refused(work, capsys):
    before = (work / "aux" / "summary.json").stat().st_mtime_ns
    aux_main(["fit", "--config", str(work / "fit.yaml")])
    assert "nothing to do" in capsys.readouterr().out
    assert (work / "aux" / "summary.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"holds another finished aux fit \(differs in: model\)"):
        aux_main(["fit", "--config", str(work / "fit.yaml"), "--model.l1", "0.5"])


def test_predictions_read_like_ground_truth(work):
    pred, n_tokens = work / "pred", PREDICT["max_contexts"] * (CONTEXT - 1)
    result = json.loads((pred / "result.json").read_text())
    assert result["source"] == "aux" and result["dtype"] == "float32" and result["n_tokens"] == n_tokens
    assert result["components"] == json.loads((work / "run" / "result.json").read_text())["components"]
    assert len(result["shards"]) == 4  # 10 contexts, 3 per shard
    assert read_chi(pred).shape == (8, n_tokens) and read_pcs(pred).shape == (8, n_tokens)
    assert read_tokens(pred).num_rows == n_tokens


def test_predicted_tokens_line_up_with_the_runs_tokens_on_the_same_data(work):
    truth = pq.read_table(work / "run" / "tokens.parquet")
    predicted = read_tokens(work / "pred").slice(0, truth.num_rows)
    for column in truth.column_names:
        assert predicted.column(column).to_pylist() == truth.column(column).to_pylist(), column


def test_predicted_pcs_are_the_aux_model_applied_to_the_runs_features(work):
    """Oracle: the fitted bundle applied to the feature cache that aux fit trained on."""
    bundle = AuxBundle.load(work / "aux")
    features = torch.from_numpy(np.load(work / "aux" / "cache" / "features.npy"))
    with torch.no_grad():
        y, _ = bundle.model(((features.double() - bundle.feature_mean) / bundle.feature_std).float())
    expected = (y.double() * bundle.target_scale).float()
    assert torch.allclose(read_pcs(work / "pred", 0, len(features)).T, expected, atol=1e-4)


def test_predicted_chi_is_the_predicted_pcs_mapped_back_to_components(work):
    pred = work / "pred"
    pca = PCABasis.load(pred / "pca.safetensors")
    assert torch.allclose(read_chi(pred).T, pca.to_components(read_pcs(pred).T.double()).float(), atol=1e-5)
    assert torch.allclose(read_pcs(pred, whiten=True), pca.whiten(read_pcs(pred).T.double()).T.float(), atol=1e-5)


def test_an_interrupted_prediction_resumes_from_its_last_finished_shard(work, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(work / "pred", pred)
    for name in ("summary.json", "result.json", "chi/shard-00003.safetensors", "tokens/shard-00003.parquet"):
        (pred / name).unlink()
        (pred / f"{name}.sha256").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (pred / "tokens").iterdir()}
    config = yaml.safe_load((work / "predict.yaml").read_text())
    aux_main(["predict", "--config", str(write(tmp_path / "p.yaml", {**config, "output_dir": str(pred)}))])
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards were not redone
    assert torch.equal(read_chi(pred), read_chi(work / "pred"))
    assert read_tokens(pred).equals(read_tokens(work / "pred"))


def test_a_finished_prediction_is_kept_and_another_one_refused(work, capsys):
    before = (work / "pred" / "summary.json").stat().st_mtime_ns
    aux_main(["predict", "--config", str(work / "predict.yaml")])
    assert "nothing to do" in capsys.readouterr().out
    assert (work / "pred" / "summary.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="holds another aux prediction"):
        aux_main(["predict", "--config", str(work / "predict.yaml"), "--data.max_contexts", "5"])


def broken_copy(work, tmp_path, edit_run=None, edit_tokens=None, edit_chi=None):
    """A copy of the run with one thing changed."""
    copy = tmp_path / "run"
    shutil.copytree(work / "run", copy)
    if edit_run:
        meta = json.loads((copy / "run.json").read_text())
        edit_run(meta)
        write_json(copy / "run.json", meta)
    if edit_tokens:
        write_parquet(copy / "tokens.parquet", edit_tokens(pq.read_table(copy / "tokens.parquet")))
    if edit_chi:
        shard = copy / "chi" / "shard-00000.safetensors"
        chi = load_file(str(shard))["chi"]
        edit_chi(chi)
        write_safetensors(shard, {"chi": chi})
    return copy


def fit_fails(run_dir, tmp_path, pattern, **extra):
    out = tmp_path / "aux"
    with pytest.raises(ValueError, match=pattern):
        aux_main(["fit", "--config", str(fit_config(tmp_path / "fit.yaml", run_dir, out, **extra))])
    assert not out.exists()  # nothing half-written


def test_tokens_that_do_not_line_up_are_refused(work, tmp_path):
    def swap(table):
        ids = table.column("token_id").to_pylist()
        ids[5] += 1
        return table.set_column(table.schema.get_field_index("token_id"), "token_id", [ids])
    fit_fails(broken_copy(work, tmp_path, edit_tokens=swap), tmp_path, "token 5 has token_id=")


def test_more_pcs_than_components_are_refused(work, tmp_path):
    fit_fails(work / "run", tmp_path, "n_pcs=9 asked, but .* has 8 components", targets={"n_pcs": 9})


def test_non_finite_chi_is_refused(work, tmp_path):
    fit_fails(broken_copy(work, tmp_path, edit_chi=lambda chi: chi[3, 7:8].fill_(float("inf"))), tmp_path,
              "not finite at token 7")


def test_a_base_model_other_than_the_runs_is_refused(work, tmp_path):
    def other_config(meta):
        meta["model"]["model_config"]["layer_norm_eps"] = 1e-3
    fit_fails(broken_copy(work, tmp_path, edit_run=other_config), tmp_path, "differ in config_hash")


def test_non_finite_activations_are_refused(work, tmp_path, tiny_lm_dir):
    from lit_susc.tinylm import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_lm_dir))
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_4h_to_h.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    tokenizer.save_pretrained(tmp_path / "broken")

    def use_broken(meta):
        meta["model"]["pretrained"] = str(tmp_path / "broken")
    fit_fails(broken_copy(work, tmp_path, edit_run=use_broken), tmp_path, "activations are not finite")


def test_predict_refuses_a_base_model_other_than_the_aux_models(work, tmp_path):
    from lit_susc.tinylm import load_causal_lm

    base = json.loads((work / "aux" / "aux.json").read_text())["base_model"]["pretrained"]
    model, tokenizer = load_causal_lm(base)
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.mul_(1.01)
    model.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    config = predict_config(tmp_path / "p.yaml", work / "aux", tmp_path / "pred", work / "docs",
                            base_model=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="differ in weights"):
        aux_main(["predict", "--config", str(config)])
    assert not (tmp_path / "pred").exists()
