"""PCA whitening: the output covariance is the identity on the kept PCs."""

import numpy as np
import pytest

from lit_susc.cluster import whiten


def _data(seed=0):
    rng = np.random.default_rng(seed)
    # PC variances ~ 200, 25, 4, 1, 0.25 and an exact null direction (column 6 = column 1)
    X = rng.standard_normal((500, 5)) * np.array([10.0, 5.0, 2.0, 1.0, 0.5]) + 3.0
    return np.c_[X, X[:, 0]]


def test_whitened_covariance_is_identity_and_null_direction_dropped():
    X = _data()
    Z, info = whiten(X)
    assert Z.shape == (500, 5) and info.components.shape == (5, 6)
    np.testing.assert_allclose(np.cov(Z, rowvar=False), np.eye(5), atol=1e-8)
    assert (np.diff(info.variances) <= 0).all()
    np.testing.assert_allclose(info.transform(X[:7]), Z[:7])


def test_min_variance_ratio_drops_small_pcs():
    Z, _info = whiten(_data(), min_variance_ratio=0.01)  # relative variances 1, .13, .02, .005, ...
    assert Z.shape[1] == 3


def test_standardize_mode_zero_mean_columns_and_rows():
    Z, info = whiten(_data(), mode="standardize")
    assert info.components is None and Z.shape == (500, 6)
    np.testing.assert_allclose(Z.mean(axis=1), 0, atol=1e-12)


def test_whiten_rejects_nan():
    X = _data()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        whiten(X)
