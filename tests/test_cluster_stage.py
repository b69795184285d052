"""``python run.py cluster`` on a susceptibility run directory: labels aligned with tokens."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import run
from lit_susc import SusceptibilityResult
from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage

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
    out = run_dir / "clusters"
    assert (out / "graph" / "graph.json").exists() and (out / "whitened.npy").exists() and (out / "summary.json").exists()
    assert not list(out.glob("knn_*"))  # the neighbour arrays were scratch


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


def test_a_memory_budget_too_small_for_one_block_is_refused_before_anything_is_written(tmp_path, capsys):
    run_dir = _write_run(tmp_path, np.random.default_rng(0).standard_normal((100, 4)))
    _fails(run_dir, capsys, "cluster.memory_budget_gib=1e-06 is too small: memory_budget=1073 bytes cannot hold",
           "--memory_budget_gib", "1e-6")
    assert not (run_dir / "clusters").exists()


def _prediction(directory, pcs, basis, shards=((0, 250), (250, 400))):
    """aux predict's layout for PC scores ``pcs`` [K, N] of ``basis`` (an aux.PCABasis): each shard's
    pcs, chi = basis.to_components(pcs) and token table, the basis, result.json."""
    from lit_susc.aux.bundle import PCA_FILE
    from lit_susc.rundir import mark_finished, shard_name, write_json, write_parquet, write_shard

    n = pcs.shape[1]
    chi = basis.to_components(pcs.T.double()).T.float()
    tokens = pa.table({"doc_id": np.zeros(n, dtype=np.int64), "position": np.arange(n), "token_id": np.arange(n) % 7})
    index = {"shards": [], "pcs": {"n_pcs": pcs.shape[0], "shards": []}, "tokens": []}
    for i, (a, b) in enumerate(shards):
        for kind, x, key in (("chi", chi, "shards"), ("pcs", pcs, None)):
            entry = {"file": write_shard(directory, kind, i, x[:, a:b].contiguous()), "start": a, "stop": b}
            (index[key] if key else index["pcs"]["shards"]).append(entry)
        write_parquet(directory / shard_name("tokens", i, ".parquet"), tokens.slice(a, b - a))
        index["tokens"].append({"file": shard_name("tokens", i, ".parquet"), "start": a, "stop": b})
    basis.save(directory / PCA_FILE)
    write_json(directory / "result.json", {"source": "aux", "components": [f"c{j}" for j in range(chi.shape[0])],
                                           "n_tokens": n, **index})
    mark_finished(directory, {"tokens": n})
    return directory


def _basis(K=3, d=6, seed=0, standardize=True):
    from lit_susc.aux.pca import PCABasis

    g = torch.Generator().manual_seed(seed)
    V = torch.linalg.qr(torch.randn(d, K, generator=g, dtype=torch.float64))[0].T.contiguous()
    scale = 0.5 + torch.rand(d, generator=g, dtype=torch.float64) if standardize else torch.ones(d, dtype=torch.float64)
    return PCABasis(mean=torch.randn(d, generator=g, dtype=torch.float64), scale=scale, components=V,
                    variances=torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)[:K])


def test_an_aux_prediction_is_clustered_from_its_pc_scores_at_the_distances_of_its_whitened_chi(tmp_path):
    """Invariant: chi = (p V) * s + mu is an injective linear map of the PC scores p, so whitened
    they are the same points up to a rotation: the stage's whitened.npy, read from the 3 PC
    columns, has the pairwise distances of whiten(chi) of the 6 component columns."""
    from scipy.spatial.distance import pdist

    from lit_susc.cluster import whiten

    basis = _basis()
    pcs = (torch.randn(3, 400, generator=torch.Generator().manual_seed(1)) * torch.tensor([[3.0], [1.5], [0.7]]))
    run_dir = _prediction(tmp_path / "pred", pcs.float(), basis)
    out = run_cluster_stage(ClusterConfig(input_dir=str(run_dir), k=10, min_size=5, alpha=1e-2, eps=1e-4),
                            progress=False)
    Z = np.load(out / "whitened.npy")
    assert Z.dtype == np.float32 and Z.shape == (400, 3)
    chi = basis.to_components(pcs.float().T.double()).float().double().numpy()
    np.testing.assert_allclose(pdist(Z), pdist(whiten(chi)[0]), rtol=1e-4, atol=1e-5)


def test_a_whitened_pc_is_as_reliable_fitted_on_the_pc_scores_as_on_chi():
    """Invariant: without standardisation the PCs of chi are those of the PC scores turned by V, so
    pc_reliabilities gives the same values in both spaces (chi's noise m_j, the truth's PCA)."""
    from lit_susc.cluster.stage import pc_reliabilities
    from lit_susc.cluster.whiten import fit_whitening

    basis = _basis(standardize=False)
    p = np.random.default_rng(3).standard_normal((500, 3)) * [3.0, 1.5, 0.7]
    chi = basis.to_components(torch.from_numpy(p)).numpy()
    noise = (np.linspace(0.05, 0.6, 6), basis)
    in_pcs = pc_reliabilities(fit_whitening(lambda: [p])[0], noise, "pcs")
    in_chi = pc_reliabilities(fit_whitening(lambda: [chi], min_variance_ratio=1e-9)[0], noise, "chi")
    assert 0 < in_pcs.min() < in_pcs.max() < 1
    np.testing.assert_allclose(in_pcs, in_chi, rtol=1e-8)
