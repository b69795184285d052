"""Sweep conductances against brute force over every prefix, with weights and self-loops."""

import numpy as np
import pytest
import scipy.sparse as sp

from lit_susc.cluster import sweep_cut
from lit_susc.cluster.sweep import sweep_profile


def _random_graph(n, seed, self_loops):
    rng = np.random.default_rng(seed)
    W = rng.uniform(0.1, 2.0, (n, n)) * (rng.random((n, n)) < 0.35)
    W = np.triu(W, 1)
    W = W + W.T
    if self_loops:
        W[np.diag_indices(n)] = rng.uniform(0, 1.5, n) * (rng.random(n) < 0.5)
    return W


def _brute_phi(W, S):
    inside = np.zeros(len(W), bool)
    inside[S] = True
    deg = W.sum(1)
    cut = W[inside][:, ~inside].sum()
    den = min(deg[inside].sum(), deg.sum() - deg[inside].sum())
    return cut / den if den > 0 else np.inf


@pytest.mark.parametrize("self_loops", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_prefix_conductance_matches_brute_force(self_loops, seed):
    W = _random_graph(14, seed, self_loops)
    rng = np.random.default_rng(seed + 10)
    p = rng.random(14) * (rng.random(14) < 0.8)
    order, phi = sweep_profile(sp.csr_matrix(W), p)
    deg = W.sum(1)
    support = np.flatnonzero(p > 0)
    # oracle order: p/d descending, ties by id
    expected = support[np.lexsort((support, -(p[support] / deg[support])))]
    np.testing.assert_array_equal(order, expected)
    brute = np.array([_brute_phi(W, order[: i + 1]) for i in range(len(order))])
    np.testing.assert_allclose(phi, brute, rtol=1e-12, atol=1e-14)


def test_sweep_cut_returns_brute_force_best_within_size_limits():
    W = _random_graph(20, 7, True)
    p = np.random.default_rng(3).random(20)
    S, phi = sweep_cut(sp.csr_matrix(W), p, min_size=3, max_fraction=0.5)
    order, _ = sweep_profile(sp.csr_matrix(W), p)
    brute = [_brute_phi(W, order[:m]) for m in range(3, 11)]
    assert phi == pytest.approx(min(brute), rel=1e-12)
    assert len(S) == 3 + int(np.argmin(brute))


def test_sweep_cut_finds_the_weak_bridge_of_two_cliques():
    # oracle: two 5-cliques joined by one weight-0.1 edge; {0..4} has Phi = 0.1 / (20 + 0.1)
    W = np.zeros((10, 10))
    W[:5, :5] = W[5:, 5:] = 1.0
    np.fill_diagonal(W, 0.0)
    W[4, 5] = W[5, 4] = 0.1
    p = np.r_[np.linspace(1, 0.5, 5), np.linspace(0.1, 0.01, 5)]
    S, phi = sweep_cut(sp.csr_matrix(W), p)
    assert sorted(S) == [0, 1, 2, 3, 4]
    assert phi == pytest.approx(0.1 / 20.1)
