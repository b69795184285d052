"""knn_jaccard: identical spaces, independent spaces against the hypergeometric overlap, a hand-computed case."""

import numpy as np
import pytest
from scipy.stats import hypergeom

from lit_susc.analysis import knn_jaccard, knn_jaccard_per_token, neighbour_jaccard

# Two 1-D spaces of four tokens, t0..t3, distinct distances (no ties).
LINE_X = np.array([[0.0], [1.0], [3.0], [7.0]])
LINE_Y = np.array([[0.0], [7.0], [1.0], [3.0]])


def test_identical_spaces_give_one():
    X = np.random.default_rng(0).normal(size=(200, 4))
    assert knn_jaccard(X, X, k=10) == 1.0


def test_a_rotated_and_scaled_copy_gives_one():
    """Euclidean neighbours do not change under rotation and isotropic scaling."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert knn_jaccard(X, 5.0 * X @ Q, k=10) == 1.0


def test_independent_spaces_give_the_random_overlap():
    """Oracle: for independent spaces N_k^X(t), N_k^Y(t) are independent uniform k-subsets of the N-1 others,
    so I = |N^X & N^Y| ~ Hypergeometric(N-1, k, k) and E[J] = E[I / (2k - I)] (about k / (2(N-1) - k))."""
    rng = np.random.default_rng(2)
    n, k = 600, 20
    X, Y = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    overlap = np.arange(k + 1)
    expected = float((hypergeom(n - 1, k, k).pmf(overlap) * overlap / (2 * k - overlap)).sum())
    assert expected == pytest.approx(k / (2 * (n - 1) - k), rel=0.05)
    # per-token J has sd ~0.02 here; means over 600 weakly dependent tokens fell within 0.0021 of E[J]
    # for five seeds, so 0.004 (about a quarter of E[J] = 0.0174) separates "random" from any real overlap
    assert knn_jaccard(X, Y, k=k) == pytest.approx(expected, abs=0.004)


def test_a_hand_computed_case_per_token_with_k_1():
    # nearest neighbour in X: t0->t1, t1->t0, t2->t1, t3->t2; in Y: t0->t2, t1->t3, t2->t0, t3->t2
    assert knn_jaccard_per_token(LINE_X, LINE_Y, k=1, backend="torch").tolist() == [0.0, 0.0, 0.0, 1.0]


def test_a_hand_computed_case_with_k_2():
    # X: t0 {1,2}, t1 {0,2}, t2 {0,1}, t3 {1,2}; Y: t0 {2,3}, t1 {2,3}, t2 {0,3}, t3 {0,2}: each shares 1 of 3
    assert knn_jaccard(LINE_X, LINE_Y, k=2, backend="sklearn") == pytest.approx(1 / 3)


def test_neighbour_jaccard_counts_shared_ids_of_lists_in_any_order():
    a = np.array([[4, 1, 2], [0, 5, 6]])
    b = np.array([[2, 4, 9], [7, 8, 3]])
    assert neighbour_jaccard(a, b).tolist() == [2 / 4, 0.0]


@pytest.mark.parametrize("X, Y, k, message", [
    (np.zeros((5, 2)), np.zeros((5, 2)), 5, "N=5 <= k=5"),
    (np.zeros((6, 2)), np.zeros((7, 2)), 2, "same tokens: X has N=6 rows, Y has N=7"),
    (np.zeros((6, 2)), np.zeros((6, 2)), 0, "k must be a positive integer"),
    (np.zeros(6), np.zeros((6, 2)), 2, "X must be a 2-D array"),
])
def test_bad_input_is_refused_with_what_is_wrong(X, Y, k, message):
    with pytest.raises(ValueError, match=message):
        knn_jaccard(X, Y, k=k)
