"""The leak check end to end on a tiny finished sample run and the aux model fitted on it."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_sample, short_documents
from tiny_runs import write_yaml as write

from lit_susc.analysis import LeakConfig, knn_jaccard, linear_cka, plot_leak, run_leak_check
from lit_susc.aux import AuxBundle, SplitConfig, document_split
from lit_susc.aux.cli import main as aux_main
from lit_susc.aux.fit import observation_contexts
from lit_susc.rundir import write_safetensors
from lit_susc.tinylm import load_causal_lm

CONTEXT, OBSERVED, K = 16, 16, 5
CONFIG = LeakConfig(k=K, max_tokens=None, batch_size=3)


@pytest.fixture(scope="module")
def work(tiny_lm_dir, tmp_path_factory):
    """A sample run over 16 one-context documents, an aux fit on it (4 validation documents), the leak check."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("leak")
    docs = short_documents(tmp / "docs")
    run_sample(tiny_lm_dir, docs, tmp / "run", CONTEXT, OBSERVED)
    fit = {"trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False},
           "sample_dir": str(tmp / "run"), "output_dir": str(tmp / "aux"), "batch_size": 16,
           "split": {"val_fraction": 0.25}}
    aux_main(["fit", "--config", str(write(tmp / "fit.yaml", fit))])
    table = run_leak_check(tmp / "run", tmp / "aux", tmp / "leak", CONFIG, progress=False)
    return tmp, table


@pytest.fixture(scope="module")
def oracle(work):
    """Independent of the leak check: the validation tokens' hidden states from the HF forward pass (the last
    layer from a hook on the last block, before the final norm), and the aux fit's own cached targets and
    features, with the fitted aux model applied to the features."""
    tmp, _ = work
    recorded = json.loads((tmp / "run" / "run.json").read_text())
    tokens = pq.read_table(tmp / "run" / "tokens.parquet")
    is_val = document_split(tokens.column("document").to_pylist(), SplitConfig(val_fraction=0.25))
    model, tokenizer = load_causal_lm(recorded["model"]["pretrained"])
    input_ids = observation_contexts(tokenizer, recorded["data"]).input_ids
    assert input_ids[:, 1:].flatten().tolist() == tokens.column("token_id").to_pylist()
    contexts = np.unique(tokens.column("context").to_numpy()[is_val])
    captured = {}

    def keep_last_block_output(module, args, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    model.gpt_neox.layers[-1].register_forward_hook(keep_last_block_output)
    with torch.no_grad():
        hidden = model(input_ids[contexts], output_hidden_states=True).hidden_states
    n_layers = model.config.num_hidden_layers
    # the token row of token t of a context uses position t: drop position 0 of every context
    states = [h[:, 1:].flatten(0, 1).numpy() for h in [*hidden[:n_layers], captured["last"]]]
    bundle = AuxBundle.load(tmp / "aux")
    features = torch.from_numpy(np.load(tmp / "aux" / "cache" / "features.npy")[is_val])
    with torch.no_grad():
        aux, _ = bundle.model(((features.double() - bundle.feature_mean) / bundle.feature_std).float())
    return {"states": states, "truth": np.load(tmp / "aux" / "cache" / "targets.npy")[is_val],
            "aux": aux.double().numpy(), "n_val": int(is_val.sum()),
            "after_final_norm": hidden[n_layers][:, 1:].flatten(0, 1).numpy()}


def test_one_row_per_layer_with_values_in_the_unit_interval(work, oracle):
    _, table = work
    rows = table.to_pylist()
    assert [r["layer"] for r in rows] == list(range(len(oracle["states"])))  # 0 = embeddings .. 2 = last block
    for r in rows:
        for key in ("cka_ground_truth", "cka_aux", "jaccard_ground_truth", "jaccard_aux"):
            assert 0.0 <= r[key] <= 1.0, (r["layer"], key)
        assert r["n_tokens"] == r["n_tokens_jaccard"] == oracle["n_val"] > K


def test_writes_the_table_the_plot_and_the_json(work):
    tmp, table = work
    out = tmp / "leak"
    assert pq.read_table(out / "leak.parquet").equals(table)
    assert (out / "leak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "leak.json").read_text())
    assert meta["rows"] == table.to_pylist() and meta["config"]["k"] == K
    assert meta["sample_dir"] == str(tmp / "run") and meta["aux_dir"] == str(tmp / "aux")
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["leak.json", "leak.json.sha256", "leak.parquet",
                                                                           "leak.parquet.sha256", "leak.png"]  # no scratch


def test_ground_truth_cka_is_linear_cka_of_the_hidden_states_and_the_aux_targets(work, oracle):
    """Oracle: HF hidden states at the token's own position, and targets.npy of the aux fit's cache."""
    _, table = work
    expected = [linear_cka(h, oracle["truth"]) for h in oracle["states"]]
    assert table.column("cka_ground_truth").to_pylist() == pytest.approx(expected, rel=1e-5)


def test_the_last_layer_is_taken_before_the_final_norm(work, oracle):
    _, table = work
    after = linear_cka(oracle["after_final_norm"], oracle["truth"])
    assert abs(table.column("cka_ground_truth").to_pylist()[-1] - after) > 1e-3


def test_aux_cka_is_linear_cka_of_the_hidden_states_and_the_aux_models_predictions(work, oracle):
    """Oracle: the fitted aux model applied to the feature cache it trained on (validation rows)."""
    _, table = work
    expected = [linear_cka(h, oracle["aux"]) for h in oracle["states"]]
    assert table.column("cka_aux").to_pylist() == pytest.approx(expected, rel=1e-4)


def test_jaccard_is_knn_jaccard_of_the_hidden_states_and_the_susceptibilities(work, oracle):
    _, table = work
    truth = [knn_jaccard(h, oracle["truth"], k=K) for h in oracle["states"]]
    aux = [knn_jaccard(h, oracle["aux"], k=K) for h in oracle["states"]]
    assert table.column("jaccard_ground_truth").to_pylist() == pytest.approx(truth, abs=1e-12)
    assert table.column("jaccard_aux").to_pylist() == pytest.approx(aux, abs=1e-12)


def test_a_subsample_limits_the_knn_part_but_not_cka(work, tmp_path):
    tmp, table = work
    sub = run_leak_check(tmp / "run", tmp / "aux", tmp_path / "leak", LeakConfig(k=K, max_tokens=20),
                         progress=False)
    assert sub.column("n_tokens_jaccard").to_pylist() == [20] * table.num_rows
    assert sub.column("cka_aux").to_pylist() == pytest.approx(table.column("cka_aux").to_pylist(), rel=1e-9)


def test_a_finished_check_is_kept_and_another_one_refused(work, capsys):
    tmp, table = work
    before = (tmp / "leak" / "leak.json").stat().st_mtime_ns
    assert run_leak_check(tmp / "run", tmp / "aux", tmp / "leak", CONFIG, progress=False).equals(table)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp / "leak" / "leak.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"holds another leak check \(differs in: config\)"):
        run_leak_check(tmp / "run", tmp / "aux", tmp / "leak", LeakConfig(k=K + 1, max_tokens=None), progress=False)


def test_a_run_the_aux_model_was_not_fit_on_is_refused(work, tmp_path):
    tmp, _ = work
    other = tmp_path / "run"
    shutil.copytree(tmp / "run", other)
    shard = other / "chi" / "shard-00000.safetensors"
    write_safetensors(shard, {"chi": load_file(str(shard))["chi"] * 2})  # a consistent file of another run
    with pytest.raises(ValueError, match="PCA mean is not the mean of .* training-split chi"):
        run_leak_check(other, tmp / "aux", tmp_path / "leak", CONFIG, progress=False)
    assert not (tmp_path / "leak").exists()


def test_k_not_below_the_knn_tokens_is_refused_before_any_output(work, tmp_path):
    tmp, _ = work
    with pytest.raises(ValueError, match="k-NN part has 6 validation tokens, not more than k=6; lower k"):
        run_leak_check(tmp / "run", tmp / "aux", tmp_path / "leak", LeakConfig(k=6, max_tokens=6), progress=False)
    assert not (tmp_path / "leak").exists()


def test_plot_leak_redraws_the_figure_from_the_table(work, tmp_path):
    _, table = work
    plot_leak(table, tmp_path / "again.png", k=K)
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, r"^leak\.k must be a whole number >= 1, got 0"),
    ("max_tokens", 1, r"^leak\.max_tokens must be a whole number >= 2 or null, got 1"),
    ("seed", -1, r"^leak\.seed must be a whole number >= 0"),
    ("backend", "annoy", "unknown k-NN backend 'annoy'"),
    ("batch_size", 0, r"^leak\.batch_size must be a whole number >= 1"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        LeakConfig(**{field: value})
