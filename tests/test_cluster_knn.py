"""k-NN backends (exact and approximate), the recall check, "auto", graph kernel and input checks."""

import json
import re

import numpy as np
import pytest
from test_cluster_planted import _check_recovery, planted_data
from test_cluster_stage import _write_run

from lit_susc.cluster import cluster_graph, graph_from_knn, knn, knn_graph, whiten
from lit_susc.cluster.knn import RECALL_SAMPLE, resolve_backend, row_blocks
from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage
from lit_susc.rundir import write_memmap


def _distinct(n=300, d=5, seed=0):
    # continuous random data in float64: all pairwise distances distinct
    return np.random.default_rng(seed).standard_normal((n, d))


def _brute(X, k, rows=None):
    """Oracle: the k nearest of the points ``rows`` (default all) by the full distance matrix."""
    rows = np.arange(len(X)) if rows is None else rows
    D = np.linalg.norm(X[rows, None] - X[None], axis=-1)
    D[np.arange(len(rows)), rows] = np.inf
    idx = np.argsort(D, axis=1)[:, :k]
    return idx, np.take_along_axis(D, idx, 1)


def test_backends_agree_exactly_with_brute_force():
    X = _distinct()
    idx0, d0 = _brute(X, 10)
    for backend in ["sklearn", "torch", "faiss", "keops"]:  # keops compiles once (~10 s, cached)
        idx, dist = knn(X, 10, backend)
        assert idx.dtype == np.int64 and idx.shape == (300, 10)
        np.testing.assert_array_equal(idx, idx0, err_msg=backend)
        np.testing.assert_allclose(dist, d0, rtol=1e-10, err_msg=backend)


def test_torch_chunking_does_not_change_neighbours():
    X = _distinct(seed=1)
    np.testing.assert_array_equal(knn(X, 7, "torch", chunk_size=17)[0], knn(X, 7, "sklearn")[0])


def test_point_itself_is_excluded_even_with_duplicates():
    X = np.repeat(_distinct(40, 3), 2, axis=0)  # every point twice
    idx, dist = knn(X, 3, "torch")
    assert not (idx == np.arange(80)[:, None]).any()
    assert (dist[:, 0] == 0).all()  # the twin comes first


def test_gaussian_local_kernel_formula_on_a_line():
    # oracle by hand: points 0, 1, 3, 7, 12 on a line, k = 2, s_i = distance to 2nd neighbour
    x = np.array([0.0, 1.0, 3.0, 7.0, 12.0])[:, None]
    A = knn_graph(x, 2, kernel="gaussian_local", local_scale_neighbor=2, backend="sklearn").toarray()
    s = np.array([3.0, 2.0, 3.0, 5.0, 9.0])
    edges = {(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)}  # union of the directed 2-NN
    W = np.zeros((5, 5))
    for i, j in edges:
        W[i, j] = W[j, i] = np.exp(-((x[i, 0] - x[j, 0]) ** 2) / (s[i] * s[j]))
    np.testing.assert_allclose(A, W, rtol=1e-12)


def test_unweighted_and_global_gaussian_kernels():
    x = np.array([0.0, 1.0, 3.0, 7.0, 12.0])[:, None]
    U = knn_graph(x, 2, kernel="unweighted", backend="sklearn")
    G = knn_graph(x, 2, kernel="gaussian", sigma=2.0, backend="sklearn")
    assert set(U.data) == {1.0} and U.nnz == 12 and U.diagonal().sum() == 0
    np.testing.assert_allclose(G[0, 2], np.exp(-9 / 4))
    assert (abs(G - G.T) > 0).nnz == 0


@pytest.mark.parametrize(
    "X, k, match",
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]), 1, "NaN"),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [3.0, 4.0]]), 1, "inf"),
        (np.zeros((4, 2)), 5, "N=4 <= k=5"),
        (np.zeros((5, 2)), 0, "k must be a positive"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(X, k, match):
    with pytest.raises(ValueError, match=match):
        knn_graph(X, k, backend="sklearn")


@pytest.mark.parametrize("backend", ["faiss", "faiss_ivf"])
def test_faiss_row_blocks_equal_the_full_search(backend):
    X = _distinct(1500, 8, seed=2)
    # nprobe 4 of 38 cells: a real approximation, whose index every block must rebuild alike
    idx, dist = knn(X, 10, backend, chunk_size=256, nprobe=4, min_recall=0.5)
    parts = [knn(X, 10, backend, rows=slice(a, b), nprobe=4, min_recall=0.5) for a, b in row_blocks(len(X), 3)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), idx)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), dist)


@pytest.mark.parametrize("rows", [None, slice(1200, 2000)])
def test_reported_recall_is_the_share_of_true_neighbours_found(rows, capsys):
    # Gaussian d = 16, 8 of 51 cells scanned: recall well below 1 (~0.7), so the count is tested
    X, k = _distinct(2000, 16, seed=3), 20
    idx, _, report = knn(X, k, "faiss_ivf", nprobe=8, min_recall=0.0, rows=rows, return_report=True)
    start = 0 if rows is None else rows.start
    s = report.sampled
    assert report.backend == "faiss_ivf" and len(s) == min(len(idx), RECALL_SAMPLE)
    assert (np.diff(s) > 0).all() and s[0] >= start and s[-1] < start + len(idx)
    truth = _brute(X, k, s)[0]
    found = np.mean([len(set(idx[i - start]) & set(t)) for i, t in zip(s, truth, strict=True)]) / k
    assert 0.5 < report.recall < 0.99 and report.recall == pytest.approx(found, abs=1e-12)
    assert f"lit-susc: k-NN: faiss_ivf, recall@20 = {report.recall:.3f} on {len(s)} sampled queries" in \
        capsys.readouterr().out


def test_a_recall_below_the_floor_raises_saying_what_to_change():
    X = _distinct(2000, 16, seed=3)
    with pytest.raises(ValueError, match=r"k-NN faiss_ivf found recall@20 = 0\.\d+ on 1000 sampled queries, below "
                                         r"min_recall=0.99: raise nprobe \(now 3;.*use an exact backend"):
        knn(X, 20, "faiss_ivf", nprobe=3, min_recall=0.99)


def test_planted_groups_recovered_with_the_approximate_backend():
    X, truth = planted_data()
    # 16 of 90 cells scanned: recall ~0.81, the misses mostly in the structureless cloud
    idx, dist, report = knn(whiten(X)[0], 45, "faiss_ivf", nprobe=16, min_recall=0.5, return_report=True)
    assert 0.5 < report.recall < 0.9
    labels, _ = cluster_graph(graph_from_knn(idx, dist), alpha=1e-2, eps=1e-4, progress=False)
    _check_recovery(labels, truth)


@pytest.mark.parametrize("budget, chosen", [(600.0, "faiss"), (1e-6, "faiss_ivf")])
def test_auto_searches_exactly_within_the_budget_and_approximately_beyond(budget, chosen, capsys):
    X = _distinct(400, 6, seed=4)
    idx, _, report = knn(X, 10, "auto", device="cpu", exact_budget_s=budget, return_report=True)
    assert report.backend == chosen
    out = capsys.readouterr().out
    assert re.search(rf"lit-susc: k-NN: auto -> {chosen}: exact search of N=400, d=6 estimated at \S+ s "
                     rf"\(3 N\^2 d flops at \S+ flop/s, \d+ CPU cores\) {'<=' if chosen == 'faiss' else '>'} "
                     rf"exact_budget_s={budget:g}", out), out
    np.testing.assert_array_equal(idx, _brute(X, 10)[0])  # recall 1 here, so both are exact


def test_auto_on_cuda_is_keops_until_the_budget():
    # torch.device("cuda") needs no GPU to be named: the rule only looks at the device's type
    assert resolve_backend("auto", "cuda", (10**5, 64)) == "keops"
    assert resolve_backend("auto", "cuda", (10**7, 64)) == "faiss_ivf"
    assert resolve_backend("auto", "cuda") == "keops" and resolve_backend("auto", "cpu") == "faiss"
    with pytest.raises(ValueError, match="unknown k-NN backend 'annoy'; use one of 'auto', 'keops'"):
        resolve_backend("annoy")


def test_the_cluster_stage_records_the_backend_and_recall_and_stops_below_the_floor(tmp_path, capsys):
    run_dir = _write_run(tmp_path / "run", _distinct(1500, 8, seed=5))
    out = run_cluster_stage(ClusterConfig(input_dir=str(run_dir), k=10, backend="faiss_ivf", nprobe=8, min_recall=0.5,
                                          alpha=1e-2, eps=1e-4, min_size=5), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    line = re.search(r"lit-susc: k-NN: faiss_ivf, recall@10 = (0\.\d+) on 1000 sampled", capsys.readouterr().out)
    assert summary["knn_backend"] == "faiss_ivf" and 0.5 < summary["knn_recall"] < 1
    assert f"{summary['knn_recall']:.3f}" == line.group(1)
    with pytest.raises(ValueError, match="below min_recall=0.999: raise nprobe"):
        run_cluster_stage(ClusterConfig(input_dir=str(run_dir), output_dir=str(tmp_path / "strict"), k=10,
                                        backend="faiss_ivf", nprobe=8, min_recall=0.999), progress=False)
    assert not (tmp_path / "strict" / "summary.json").exists()


@pytest.mark.parametrize("backend", ["faiss", "faiss_ivf", "torch", "sklearn"])
def test_neighbours_stored_into_memory_mapped_arrays_equal_the_returned_ones(tmp_path, backend):
    """knn(out=...) on a read-only memory-mapped X fills int32/float64 files block by block with
    exactly what it returns in memory (the cluster stage's path)."""
    X = _distinct(700, 6, seed=4).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    idx, dist = knn(X, 9, backend, chunk_size=128, nprobe=4, min_recall=0.5, verbose=False)
    with write_memmap(tmp_path / "i.npy", np.int32, idx.shape) as I, write_memmap(tmp_path / "d.npy", np.float64,
                                                                                  idx.shape) as D:
        got = knn(mapped, 9, backend, chunk_size=128, nprobe=4, min_recall=0.5, verbose=False, out=(I, D))
        assert got[0] is I and got[1] is D
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), idx)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), dist)


def test_out_arrays_of_the_wrong_shape_are_refused():
    X = _distinct(100, 3)
    with pytest.raises(ValueError, match=r"out must be two \[100, 5\] arrays"):
        knn(X, 5, "faiss", out=(np.empty((100, 4), np.int64), np.empty((100, 4))))
