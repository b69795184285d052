"""End-to-end: tight planted groups around a diffuse cloud are recovered, the cloud is not."""

import numpy as np
import pytest

from lit_susc.cluster import cluster_graph, find_clusters, knn_graph, whiten

SIZES = (30, 60, 100, 150, 200)


def planted_data() -> tuple[np.ndarray, np.ndarray]:
    """(X, truth): 5 tight groups of SIZES points around a diffuse cloud of 3000 (truth -1), d = 20."""
    rng = np.random.default_rng(0)
    d = 20
    parts, truth = [rng.standard_normal((3000, d))], [np.full(3000, -1)]
    for g, s in enumerate(SIZES):
        c = rng.standard_normal(d)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
        truth.append(np.full(s, g))
    return np.vstack(parts), np.concatenate(truth)


@pytest.fixture(scope="module")
def planted():
    X, truth = planted_data()
    return X, truth, knn_graph(whiten(X)[0], 45)


def _check_recovery(labels, truth):
    for g in range(len(SIZES)):
        G = truth == g
        jac = [np.sum(G & (labels == c)) / np.sum(G | (labels == c)) for c in np.unique(labels[G]) if c >= 0]
        assert max(jac, default=0.0) >= 0.8, f"planted group {g} (size {SIZES[g]}) not recovered"
    assert np.mean(labels[truth == -1] >= 0) <= 0.1


def test_planted_groups_recovered_fast_parameters(planted):
    X, truth, _ = planted
    labels, stats = find_clusters(X, alpha=1e-2, eps=1e-4, progress=False)
    _check_recovery(labels, truth)
    assert labels.dtype == np.int64 and len(stats) == labels.max() + 1
    assert all(s["conductance"] < 0.2 and s["size"] >= 20 for s in stats)
    assert [s["size"] for s in stats] == np.bincount(labels[labels >= 0]).tolist()


def test_planted_groups_recovered_spec_defaults(planted):
    _, truth, A = planted
    labels, _ = cluster_graph(A, alpha=1e-3, eps=1e-7, min_size=20, progress=False)
    _check_recovery(labels, truth)


def test_reproducible_from_seed_and_independent_of_threads(planted):
    _, _, A = planted
    kw = {"alpha": 1e-2, "eps": 1e-4, "seed": 3, "seeds_per_round": 8, "progress": False}
    l1, s1 = cluster_graph(A, n_threads=1, **kw)
    l2, s2 = cluster_graph(A, n_threads=2, **kw)
    np.testing.assert_array_equal(l1, l2)
    assert s1 == s2
