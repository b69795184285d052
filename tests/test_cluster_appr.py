"""ACL push against networkx's exact personalized PageRank (design.md sections 2 and 6)."""

import networkx as nx
import numpy as np
import pytest

from lit_susc.cluster import approximate_pagerank


def _graph(name):
    G = nx.karate_club_graph() if name == "karate" else nx.les_miserables_graph()
    nodes = list(G)
    A = nx.to_scipy_sparse_array(G, nodelist=nodes, weight="weight", format="csr")
    return G, nodes, A


def _exact(G, nodes, personalization, alpha):
    # lazy walk with teleport alpha == plain walk with teleport 2 alpha / (1 + alpha)
    plain = 2 * alpha / (1 + alpha)
    pr = nx.pagerank(G, alpha=1 - plain, personalization=personalization, tol=1e-14, max_iter=100000)
    return np.array([pr[u] for u in nodes])


@pytest.mark.parametrize("name", ["karate", "lesmis"])
@pytest.mark.parametrize("alpha", [0.05, 0.15])
@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_push_error_bounded_by_residual_networkx_oracle(name, alpha, eps):
    G, nodes, A = _graph(name)
    seed = 5
    p, r = approximate_pagerank(A, seed, alpha=alpha, eps=eps)
    pr = _exact(G, nodes, {nodes[seed]: 1.0}, alpha)
    deg = np.asarray(A.sum(axis=1)).ravel()
    assert np.abs(p - pr).sum() <= r.sum() + 1e-12
    assert (r < eps * deg).all()
    assert p.sum() + r.sum() == pytest.approx(1.0, abs=1e-12)  # push conserves mass


def test_push_seed_list_is_uniform_start_networkx_oracle():
    G, nodes, A = _graph("lesmis")
    p, r = approximate_pagerank(A, [0, 11, 40], alpha=0.1, eps=1e-7)
    pr = _exact(G, nodes, {nodes[i]: 1 / 3 for i in (0, 11, 40)}, 0.1)
    assert np.abs(p - pr).sum() <= r.sum() + 1e-12
    assert r.sum() < 1e-3
