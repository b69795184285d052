"""lit_susc.statistics: streaming moments, PCA and whitening, chi's conventions."""

import numpy as np
import pytest
import torch

from lit_susc.statistics import (
    CONVENTIONS,
    MIN_VARIANCE_RATIO,
    Moments,
    column_covariance,
    convention_coefficient,
    convert_chi,
    convert_chi_se,
    principal_components,
    rank,
    whiten_scores,
)


def rows(n=3000, d=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) + 3 * np.eye(d)) * np.logspace(0, -1, d) + 5


def chunks(X, size=401):
    return [X[a:a + size] for a in range(0, len(X), size)]


def moments(X, size=401, **kwargs):
    m = Moments(**kwargs)
    for chunk in chunks(X, size):
        m.update(chunk)
    return m


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_moments_over_chunks_equal_numpy_mean_and_variance_of_the_whole_array(library):
    """Oracle: numpy's mean and var (ddof 0 and 1) of the array in one piece."""
    X = rows()
    m = moments(X if library == "numpy" else torch.from_numpy(X))
    got = [np.asarray(v) for v in (m.mean(), m.var(ddof=0), m.var(), m.std())]
    want = [X.mean(0), X.var(0), X.var(0, ddof=1), X.std(0, ddof=1)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=0)
    assert m.count == len(X)


def test_moments_of_float32_rows_are_float64_moments_of_their_values():
    """Oracle: numpy on the rows converted to float64 first."""
    X = rows().astype(np.float32)
    m = moments(X)
    assert m.mean().dtype == np.float64
    np.testing.assert_allclose(m.mean(), X.astype(np.float64).mean(0), rtol=1e-12, atol=0)


def test_merging_two_states_equals_one_state_over_both():
    """Oracle: one state updated with every chunk (the sums agree up to their order of addition)."""
    X = rows()
    whole = moments(X)
    merged = moments(X[:1234]).merge(moments(X[1234:]))
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-14, atol=0)
    np.testing.assert_allclose(merged.total_sq, whole.total_sq, rtol=1e-14, atol=0)


def test_merging_into_an_empty_state_copies_the_other():
    part = moments(rows())
    merged = Moments().merge(part)
    assert merged.count == part.count and np.array_equal(merged.total, part.total)
    assert merged.total is not part.total


def test_states_about_different_centres_are_not_merged():
    X = rows()
    with pytest.raises(ValueError, match="different centres"):
        moments(X[:100], center="first").merge(moments(X[100:200], center="first"))


def test_a_centre_near_the_mean_keeps_the_variance_exact_when_the_mean_dwarfs_the_spread():
    """Oracle: numpy's two-pass variance. Columns of mean 1e9 and spread 1, where raw sums of
    squares would cancel about 18 digits."""
    X = rows(d=3) - 5 + 1e9
    m = moments(X, center="first")
    np.testing.assert_allclose(m.var(), X.var(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(m.mean(), X.mean(0), rtol=1e-14)


def test_scale_is_the_standard_deviation_and_one_for_a_constant_column():
    """Oracle: numpy's std (ddof 1)."""
    X = rows(d=3)
    X[:, 1] = 2.5
    s = moments(X).scale()
    np.testing.assert_allclose(s[[0, 2]], X[:, [0, 2]].std(0, ddof=1), rtol=1e-12)
    assert s[1] == 1.0


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_column_covariance_equals_numpy_cov(library):
    """Oracle: numpy.cov of the whole array (ddof 1), and of the columns divided by the scales."""
    X = rows()
    data = X if library == "numpy" else torch.from_numpy(X)
    mean = moments(data).mean()
    np.testing.assert_allclose(np.asarray(column_covariance(chunks(data), mean)), np.cov(X, rowvar=False), rtol=1e-12,
                               atol=1e-12 * np.abs(np.cov(X, rowvar=False)).max())
    scale = X.std(0, ddof=1)
    scaled = column_covariance(chunks(data), mean, scale if library == "numpy" else torch.from_numpy(scale))
    np.testing.assert_allclose(np.asarray(scaled), np.corrcoef(X, rowvar=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_principal_components_are_numpy_eigh_descending_with_the_largest_entry_positive(library):
    """Oracle: numpy.linalg.eigh, its eigenpairs reversed and each vector signed by its largest-|.| entry."""
    C = np.cov(rows(), rowvar=False)
    lam, V = np.linalg.eigh(C)
    lam, V = lam[::-1], V[:, ::-1].T
    V = V * np.sign(V[np.arange(len(V)), np.abs(V).argmax(1)])[:, None]
    variances, components = principal_components(C if library == "numpy" else torch.from_numpy(C))
    np.testing.assert_allclose(np.asarray(variances), lam, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(components), V, atol=1e-10)
    components = np.asarray(components)
    assert (components[np.arange(len(V)), np.abs(components).argmax(1)] > 0).all()


def test_whitened_scores_have_identity_covariance_on_the_pcs_that_are_there():
    """Oracle: numpy.cov of the whitened scores is the identity; an exact copy of a column adds
    a direction without variance, which rank leaves out."""
    X = rows(d=5)
    X = np.c_[X, X[:, 0]]
    mean = moments(X).mean()
    variances, components = principal_components(column_covariance(chunks(X), mean))
    kept = rank(variances)
    assert kept == 5
    white = whiten_scores((X - mean) @ components[:kept].T, variances[:kept])
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(kept), atol=1e-10)


def test_rank_leaves_out_the_pcs_at_or_below_the_threshold():
    """The documented rule: lambda_j > MIN_VARIANCE_RATIO * lambda_1 counts; equality does not."""
    variances = 4.0 * np.array([1.0, 1e-3, 2 * MIN_VARIANCE_RATIO, MIN_VARIANCE_RATIO, 1e-9, 0.0])  # 4: exact
    assert rank(variances) == 3
    assert rank(variances, min_variance_ratio=1e-2) == 1
    assert rank(torch.from_numpy(variances)) == 3


def test_rank_is_zero_without_variance():
    assert rank(np.zeros(4)) == 0


@pytest.mark.parametrize("source", CONVENTIONS)
@pytest.mark.parametrize("target", CONVENTIONS)
def test_chi_converted_and_converted_back_is_the_chi_it_came_from(source, target):
    """Oracle: the identity (to rounding) for the round trip; chi = k Cov for the one-way map."""
    cov = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nbeta = 23.7
    chi = convention_coefficient(source, nbeta) * cov
    there = convert_chi(chi, nbeta, source, target)
    torch.testing.assert_close(there, convention_coefficient(target, nbeta) * cov, rtol=1e-15, atol=0)
    torch.testing.assert_close(convert_chi(there, nbeta, target, source), chi, rtol=1e-15, atol=0)


def test_baker_chi_is_minus_seed_chi_over_nbeta_and_its_se_has_no_sign():
    """Oracle: the definitions, baker = -Cov and seed = nbeta Cov."""
    seed, se = torch.tensor([2.0, -4.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(convert_chi(seed, 8.0, "seed", "baker"), torch.tensor([-0.25, 0.5]))
    torch.testing.assert_close(convert_chi_se(se, 8.0, "seed", "baker"), torch.tensor([0.0625, 0.125]))


def test_an_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="unknown chi convention 'devinterp'"):
        convert_chi(torch.zeros(2), 10.0, "seed", "devinterp")
