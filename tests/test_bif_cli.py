"""``run.py bif``: BIF matrices of a causal LM's training samples on queries, with their texts."""

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import run
from lit_susc import BIFResult

CONTEXT, TRAIN, QUERY = 16, 4, 2


def _config(tmp_path, tiny_lm_dir, name, **model):
    config = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "model": {"pretrained": str(tiny_lm_dir), "output_dir": str(tmp_path / name), "top_k": 3,
                        "data": {"context_length": CONTEXT, "sampling_contexts": 8, "train_contexts": TRAIN,
                                 "query_contexts": QUERY, "batch_size": 4, **model.pop("data", {})},
                        "sgld": {"lr": 1e-4, "nbeta": 30.0, "chains": 1, "draws": 4, "burn_in": 1}, **model}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def per_sample(tiny_lm_dir, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bif")
    run.main(["bif", "--config", str(_config(tmp, tiny_lm_dir, "sample"))])
    return tmp / "sample"


def test_whole_model_bif_is_one_train_by_query_matrix(per_sample):
    result = BIFResult.load(per_sample)
    assert result.bif.shape == (1, TRAIN, QUERY) and result.components == ["all"]
    assert torch.isfinite(result.bif).all() and result.bif.abs().sum() > 0


def test_top_influences_show_the_texts_of_query_and_training_samples(per_sample):
    train = pq.read_table(per_sample / "train.parquet").column("text").to_pylist()
    top = pq.read_table(per_sample / "top_influences.parquet").to_pylist()
    assert len(top) == 3 * QUERY
    assert all(row["train_text"] == train[row["train"]] for row in top)
    markdown = (per_sample / "top_influences.md").read_text()
    assert all(row["query_text"].split("\n")[0] in markdown for row in top)


def test_finished_bif_run_is_not_recomputed(per_sample, capsys):
    before = (per_sample / "bif.safetensors").stat().st_mtime_ns
    config = yaml.safe_load((per_sample / "config.yaml").read_text())
    path = per_sample.parent / "again.yaml"
    path.write_text(yaml.safe_dump(config))
    run.main(["bif", "--config", str(path)])
    assert "nothing to do" in capsys.readouterr().out
    assert (per_sample / "bif.safetensors").stat().st_mtime_ns == before


def test_per_token_bif_restricted_to_components(tiny_lm_dir, tmp_path):
    path = _config(tmp_path, tiny_lm_dir, "token", components=["layers.0.mlp", "unembed"],
                   data={"granularity": "token"})
    run.main(["bif", "--config", str(path)])
    result = BIFResult.load(tmp_path / "token")
    n = CONTEXT - 1
    assert result.bif.shape == (2, TRAIN * n, QUERY * n)
    assert result.components == ["layers.0.mlp", "unembed"] and result.granularity == "token"
    query = pq.read_table(tmp_path / "token" / "query.parquet")
    assert "[[" in query.column("text")[0].as_py() and query.num_rows == QUERY * n
    assert json.loads((tmp_path / "token" / "bif.json").read_text())["n_train"] == TRAIN * n


def test_more_training_samples_than_the_posterior_holds_is_an_error(tiny_lm_dir, tmp_path, capsys):
    path = _config(tmp_path, tiny_lm_dir, "bad", data={"train_contexts": 20})
    with pytest.raises(SystemExit) as exit_info:
        run.main(["bif", "--config", str(path)])
    assert exit_info.value.code != 0
    assert "train_contexts" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "summary.json").exists()
