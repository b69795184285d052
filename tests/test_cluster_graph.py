"""The k-NN graph on disk (cluster.graph) against graph_from_knn's scipy CSR, and the push, sweep and
clustering on it against the same on the scipy graph."""

import numpy as np
import pytest

from lit_susc.cluster import approximate_pagerank, cluster_graph, knn, whiten
from lit_susc.cluster.appr import graph_arrays
from lit_susc.cluster.graph import ENTRY_BYTES, NODE_BYTES, ROW_BYTES, _split_budget, build_graph, load_graph
from lit_susc.cluster.knn import graph_from_knn
from lit_susc.cluster.sweep import sweep_profile
from lit_susc.rundir import CorruptFileError

KERNELS = [("gaussian_local", None), ("gaussian", None), ("gaussian", 0.3), ("unweighted", None)]


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    """k-NN of 600 points with twins (s_i = 0: the floor) and two far outliers (weights below float32's
    range, and below float64's), as memmaps: idx int32, dist float64."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((596, 4))
    X = np.vstack([X, X[:2], 60.0 * np.ones((1, 4)), 4000.0 * np.ones((1, 4))])
    idx, dist = knn(X, 10, "sklearn")
    folder = tmp_path_factory.mktemp("knn")
    np.save(folder / "idx.npy", idx.astype(np.int32))
    np.save(folder / "dist.npy", dist)
    return np.load(folder / "idx.npy", mmap_mode="r"), np.load(folder / "dist.npy", mmap_mode="r")


def _budget(n, k, rows):
    return NODE_BYTES * n + ROW_BYTES * k * rows


@pytest.mark.parametrize(("kernel", "sigma"), KERNELS)
def test_disk_graph_equals_graph_from_knn(neighbours, kernel, sigma, tmp_path):
    idx, dist = neighbours
    A = graph_from_knn(idx, dist, kernel=kernel, sigma=sigma)
    # blocks of 3 rows, whose reverse edges land in other blocks, the last one partial; reverse lists
    # sorted in ranges of a few hundred pairs
    budget = _budget(*idx.shape, 7)
    rows, capacity = _split_budget(*idx.shape, budget, ENTRY_BYTES)
    assert rows == 3 and capacity < idx.size / 10
    build_graph(idx, dist, tmp_path / "graph", kernel=kernel, sigma=sigma, memory_budget=budget)
    G = load_graph(tmp_path / "graph")
    assert isinstance(G.data, np.memmap) and not G.data.flags.writeable
    assert (G.indptr.dtype, G.indices.dtype, G.data.dtype, G.deg.dtype) == (np.int64, np.int32, np.float32,
                                                                            np.float64)
    np.testing.assert_array_equal(G.indptr, A.indptr)
    np.testing.assert_array_equal(G.indices, A.indices)
    np.testing.assert_array_equal(G.data, A.data.astype(np.float32))  # float32 rounding of the same weights
    np.testing.assert_array_equal(G.deg, graph_arrays(A.astype(np.float32)).deg)
    # float32's relative precision where it is normal
    np.testing.assert_allclose(G.deg, np.asarray(A.sum(axis=1)).ravel(), rtol=1e-6, atol=np.finfo(np.float32).tiny)
    if kernel == "gaussian_local":
        assert A.nnz < graph_from_knn(idx, dist, kernel="unweighted").nnz  # float64 underflow: edges dropped
        assert A.data.min() > 0 and G.data.min() == 0  # below float32's range: kept, weight 0
        assert 1.0 in G.data  # the twins' pair: s = floor, d = 0


def test_push_and_sweep_on_disk_graph_equal_the_scipy_graphs(neighbours, tmp_path):
    idx, dist = neighbours
    A = graph_from_knn(idx, dist)
    A32 = A.copy()
    A32.data = A32.data.astype(np.float32).astype(np.float64)
    G = load_graph(build_graph(idx, dist, tmp_path / "graph"))
    alpha = 0.05
    p, r = approximate_pagerank(G, 5, alpha=alpha, eps=1e-6)
    p32, r32 = approximate_pagerank(A32, 5, alpha=alpha, eps=1e-6)
    np.testing.assert_array_equal(p, p32)  # the same weights, so the same arithmetic
    np.testing.assert_array_equal(r, r32)
    # the float64 weights differ by <= u = 2^-24 relative, which moves the lazy walk's rows by <= u in
    # L1 and pr by <= u / alpha; each push is within its residual of its pr
    p64, r64 = approximate_pagerank(A, 5, alpha=alpha, eps=1e-6)
    assert np.abs(p - p64).sum() <= r.sum() + r64.sum() + 2.0**-24 / alpha
    for got, want in zip(sweep_profile(G, p), sweep_profile(A32, p)):
        np.testing.assert_array_equal(got, want)


def test_cluster_graph_on_disk_graph_gives_the_scipy_labels(tmp_path):
    # planted as in test_cluster_planted: tight groups around a diffuse cloud
    rng = np.random.default_rng(0)
    parts, truth = [rng.standard_normal((3000, 20))], [np.full(3000, -1)]
    for g, s in enumerate((30, 60, 100, 150, 200)):
        c = rng.standard_normal(20)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, 20)))
        truth.append(np.full(s, g))
    idx, dist = knn(whiten(np.vstack(parts))[0], 45, "sklearn")
    G = load_graph(build_graph(idx, dist, tmp_path / "graph", memory_budget=_budget(len(idx), 45, 1000)))
    kw = {"alpha": 1e-2, "eps": 1e-4, "progress": False, "n_threads": 2}
    labels, stats = cluster_graph(G, **kw)
    expected, expected_stats = cluster_graph(graph_from_knn(idx, dist), **kw)
    np.testing.assert_array_equal(labels, expected)
    assert [s["size"] for s in stats] == [s["size"] for s in expected_stats]
    truth = np.concatenate(truth)
    for g in range(5):
        assert np.bincount(labels[truth == g] + 1).max() >= 0.8 * np.sum(truth == g)


def test_memory_budget_too_small_for_one_block_or_a_hub(neighbours, tmp_path):
    idx, dist = neighbours
    with pytest.raises(ValueError, match=r"memory_budget=1000 bytes cannot hold .* raise it to at least"):
        build_graph(idx, dist, tmp_path / "graph", memory_budget=1000)
    hub = np.array(idx)
    hub[1:, 0] = np.where((hub[1:] == 0).any(axis=1), hub[1:, 0], 0)  # node 0 in every list
    with pytest.raises(ValueError, match="reverse list of node 0 .* a hub"):
        build_graph(hub, dist, tmp_path / "graph", memory_budget=_budget(*idx.shape, 7))


def test_bad_neighbour_arrays_refused(neighbours, tmp_path):
    idx, dist = np.array(neighbours[0]), np.array(neighbours[1])
    idx[3, 4] = idx[3, 2]
    with pytest.raises(ValueError, match="row 3 of idx lists a neighbour twice"):
        build_graph(idx, dist, tmp_path / "graph")
    idx[3, 4] = len(idx)
    with pytest.raises(ValueError, match="outside"):
        build_graph(idx, dist, tmp_path / "graph")


def test_corrupt_graph_file_refused_and_failed_rebuild_leaves_no_graph(neighbours, tmp_path):
    idx, dist = neighbours
    folder = build_graph(idx, dist, tmp_path / "graph")
    path = folder / "data.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"data\.npy is corrupt.*build the graph again"):
        load_graph(folder)
    build_graph(idx, dist, folder)  # rebuilt: readable again
    load_graph(folder)
    with pytest.raises(ValueError, match="local_scale_neighbor"):
        build_graph(idx, dist, folder, local_scale_neighbor=11)
    build_graph(idx, dist, folder)
    bad = np.array(idx)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="outside"):
        build_graph(bad, dist, folder)
    with pytest.raises(FileNotFoundError, match="no finished k-NN graph"):
        load_graph(folder)
    assert not list(folder.glob("*.tmp*"))  # the scratch files are gone
