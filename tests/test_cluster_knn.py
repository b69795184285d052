"""k-NN backends, graph kernel and input checks."""

import numpy as np
import pytest

from lit_susc.cluster import knn, knn_graph


def _distinct(n=300, d=5, seed=0):
    # continuous random data in float64: all pairwise distances distinct
    return np.random.default_rng(seed).standard_normal((n, d))


def _brute(X, k):
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1)[:, :k]
    return idx, np.take_along_axis(D, idx, 1)


def test_backends_agree_exactly_with_brute_force():
    X = _distinct()
    idx0, d0 = _brute(X, 10)
    for backend in ["sklearn", "torch", "keops"]:  # keops compiles once (~10 s, cached)
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
