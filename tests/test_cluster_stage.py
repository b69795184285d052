"""``python run.py cluster`` on a susceptibility run directory: labels aligned with tokens."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import run
from lit_susc import SusceptibilityResult

SIZES = [30, 80, 150]


def _write_run(directory, X, tokens=None):
    n = X.shape[0]
    tokens = tokens if tokens is not None else pa.table({"doc_id": np.zeros(n, dtype=np.int64),
                                                         "position": np.arange(n), "token_id": np.arange(n) % 7})
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), components=[f"c{i}" for i in range(X.shape[1])],
                         convention="seed", nbeta=10.0, tokens=tokens).save(directory)
    return directory


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    rng = np.random.default_rng(1)
    d = 12
    parts, truth = [rng.standard_normal((1500, d))], [np.full(1500, -1)]
    for g, s in enumerate(SIZES):
        c = rng.standard_normal(d)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
        truth.append(np.full(s, g))
    run_dir = _write_run(tmp_path_factory.mktemp("planted"), np.vstack(parts))
    run.main(["cluster", "--input_dir", str(run_dir), "--alpha", "0.01", "--eps", "1e-5"])
    return run_dir, np.concatenate(truth)


def test_every_planted_group_is_one_cluster_in_the_written_labels(planted_run):
    """Oracle: the planted groups (Jaccard >= 0.8 each; at most 10% of the cloud clustered)."""
    run_dir, truth = planted_run
    labels = pq.read_table(run_dir / "clusters" / "labels.parquet").column("label").to_numpy()
    for g in range(len(SIZES)):
        members = truth == g
        best = max(np.sum(members & (labels == c)) / np.sum(members | (labels == c))
                   for c in np.unique(labels[members]) if c >= 0)
        assert best >= 0.8
    assert np.mean(labels[truth == -1] >= 0) <= 0.1


def test_labels_keep_the_token_table_and_stats_describe_each_cluster(planted_run):
    run_dir, truth = planted_run
    table = pq.read_table(run_dir / "clusters" / "labels.parquet")
    assert table.column_names[:3] == ["doc_id", "position", "token_id"] and table.num_rows == len(truth)
    stats = pq.read_table(run_dir / "clusters" / "clusters.parquet").to_pandas()
    labels = table.column("label").to_numpy()
    assert list(stats["size"]) == [int(np.sum(labels == c)) for c in stats["label"]]
    assert (stats["conductance"] < 0.2).all()
    assert (run_dir / "clusters" / "graph.npz").exists() and (run_dir / "clusters" / "summary.json").exists()


def _fails(run_dir, capsys, pattern, *extra):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["cluster", "--input_dir", str(run_dir), *extra])
    assert exit_info.value.code == 2
    assert pattern in capsys.readouterr().err
    assert not (run_dir / "clusters" / "summary.json").exists()


def test_a_token_table_that_does_not_match_chi_is_refused(tmp_path, capsys):
    X = np.random.default_rng(0).standard_normal((100, 4))
    run_dir = _write_run(tmp_path, X, tokens=pa.table({"doc_id": np.zeros(90, dtype=np.int64)}))
    _fails(run_dir, capsys, "do not match")


def test_non_finite_chi_is_refused(tmp_path, capsys):
    X = np.random.default_rng(0).standard_normal((100, 4))
    X[3, 1] = np.nan
    _fails(_write_run(tmp_path, X), capsys, "non-finite")


def test_fewer_tokens_than_k_is_refused(tmp_path, capsys):
    _fails(_write_run(tmp_path, np.random.default_rng(0).standard_normal((30, 4))), capsys, "too few")


def test_k_zero_is_refused(tmp_path, capsys):
    _fails(_write_run(tmp_path, np.random.default_rng(0).standard_normal((100, 4))), capsys, "cluster.k must be a whole number >= 1",
           "--k", "0")


def test_pcs_that_are_mostly_noise_are_dropped_before_whitening(tmp_path):
    """Oracle: 4 signal columns (with the planted groups; chi_se 0.01) and 8 columns of pure noise
    whose chi_se is their spread: min_pc_reliability 0.5 keeps exactly the 4 signal PCs, and the
    planted groups are still found in them."""
    from safetensors.torch import load_file

    rng = np.random.default_rng(2)
    parts, truth = [rng.standard_normal((1500, 4))], [np.full(1500, -1)]
    for g, s in enumerate(SIZES):
        c = rng.standard_normal(4)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, 4)))
        truth.append(np.full(s, g))
    signal = np.vstack(parts)
    X = np.hstack([signal, rng.standard_normal((len(signal), 8))])
    se = np.hstack([np.full_like(signal, 0.01), np.ones((len(signal), 8))])
    n = len(X)
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), chi_se=torch.as_tensor(se.T.copy()),
                         components=[f"c{i}" for i in range(12)], convention="seed", nbeta=10.0,
                         tokens=pa.table({"doc_id": np.zeros(n, dtype=np.int64), "position": np.arange(n),
                                          "token_id": np.arange(n) % 7})).save(tmp_path)
    run.main(["cluster", "--input_dir", str(tmp_path), "--alpha", "0.01", "--eps", "1e-5",
              "--min_pc_reliability", "0.5"])
    assert load_file(str(tmp_path / "clusters" / "whitening.safetensors"))["components"].shape[0] == 4
    labels = pq.read_table(tmp_path / "clusters" / "labels.parquet").column("label").to_numpy()
    truth = np.concatenate(truth)
    for g in range(len(SIZES)):
        members = truth == g
        assert max(np.sum(members & (labels == c)) / np.sum(members | (labels == c))
                   for c in np.unique(labels[members]) if c >= 0) >= 0.8
