"""linear_cka against the kernel form (design.md section 6) and its invariances, blockwise accumulation, bad input."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from lit_susc.analysis import CKAAccumulator, linear_cka


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    Y = X[:, :4] @ rng.normal(size=(4, 3)) + 0.5 * rng.normal(size=(50, 3))  # partly related to X
    return X, Y


def kernel_cka(X, Y):
    """Oracle: <HKH, HLH>_F / (||HKH||_F ||HLH||_F) with the N x N Gram matrices K = XX^T, L = YY^T."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float((K * L).sum() / (np.linalg.norm(K) * np.linalg.norm(L)))


def test_equals_the_kernel_form_on_small_data(data):
    X, Y = data
    expected = kernel_cka(X, Y)
    assert 0.1 < expected < 0.99  # a case that is neither trivial nor degenerate
    assert linear_cka(X, Y) == pytest.approx(expected, rel=1e-12)


def test_is_one_for_identical_inputs(data):
    X, _ = data
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-14)


def test_is_unchanged_by_a_random_orthogonal_transform_of_x(data):
    X, Y = data
    Q = ortho_group.rvs(X.shape[1], random_state=1)
    assert linear_cka(X @ Q, Y) == pytest.approx(linear_cka(X, Y), rel=1e-12)


def test_is_unchanged_by_isotropic_scaling(data):
    X, Y = data
    assert linear_cka(3.7 * X, 0.02 * Y) == pytest.approx(linear_cka(X, Y), rel=1e-12)


def test_is_unchanged_by_a_large_common_offset(data):
    """Residual streams can have large means; centring by column sums must not cancel them away."""
    X, Y = data
    assert linear_cka(X + 1e6, Y - 3e5) == pytest.approx(linear_cka(X, Y), rel=1e-9)


def test_blockwise_result_equals_the_one_block_result():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(1000, 5)), rng.normal(size=(1000, 4))
    Y[:, 0] += X[:, 0]
    assert linear_cka(X, Y, block_size=37) == pytest.approx(linear_cka(X, Y, block_size=1000), rel=1e-12)


def test_accepts_torch_float32_and_matches_numpy(data):
    X, Y = data
    value = linear_cka(torch.from_numpy(X).float(), torch.from_numpy(Y).float())
    assert value == pytest.approx(linear_cka(X.astype(np.float32), Y.astype(np.float32)), rel=1e-12)


def test_accumulator_gives_each_y_column_group_its_own_cka(data):
    X, Y = data
    acc = CKAAccumulator()
    for a in range(0, 50, 20):
        acc.update(X[a:a + 20], np.hstack([Y, X[:, :2]])[a:a + 20])
    assert acc.compute(slice(0, 3)) == pytest.approx(linear_cka(X, Y), rel=1e-12)
    assert acc.compute(slice(3, 5)) == pytest.approx(linear_cka(X, X[:, :2]), rel=1e-12)


@pytest.mark.parametrize("X, Y, message", [
    (np.ones((5, 2)), np.ones((4, 2)), "same tokens: X has N=5 rows, Y has N=4"),
    (np.ones((1, 2)), np.ones((1, 2)), "at least 2 tokens"),
    (np.ones(5), np.ones((5, 2)), "X must be a 2-D array"),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), np.eye(3), "X contains NaN or inf"),
    (np.eye(3), np.array([[0.0], [np.inf], [1.0]]), "Y contains NaN or inf"),
    (np.full((4, 3), 2.5), np.arange(8.0).reshape(4, 2), "X has zero variance"),
    (np.arange(8.0).reshape(4, 2), np.full((4, 1), 0.1), "Y has zero variance"),
])
def test_bad_input_is_refused_with_what_is_wrong(X, Y, message):
    with pytest.raises(ValueError, match=message):
        linear_cka(X, Y)
