"""PCA whitening: the output covariance is the identity on the kept PCs; from row blocks to a file, the same."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from lit_susc.cluster import whiten
from lit_susc.cluster.whiten import fit_whitening, whiten_to_file, write_whitened
from lit_susc.result import SusceptibilityResult, read_chi
from lit_susc.rundir import verify


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


def _blocks(X, size):
    """Row blocks of X, an empty one among them (a reader may yield one)."""
    parts = [X[a:a + size] for a in range(0, len(X), size)]
    return lambda: iter([parts[0], X[:0], *parts[1:]])


def _close(Z, expected):
    """Equal to 1e-10 relative to the largest entry."""
    np.testing.assert_allclose(Z, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("mode", ["whiten", "standardize"])
@pytest.mark.parametrize("size", [1, 4, 137, 500])  # blocks narrower than d = 6, a partial last block, one block
def test_blockwise_whitening_equals_in_memory(tmp_path, mode, size):
    X = _data() + 1e3  # a mean far larger than the spread
    Z, info = whiten(X, mode=mode)
    got, path = whiten_to_file(_blocks(X, size), tmp_path / "z.npy", mode=mode, dtype=np.float64)
    _close(np.load(verify(path, "")), Z)
    _close(got.mean, info.mean)
    if mode == "whiten":
        _close(got.components, info.components)  # the same signs
        np.testing.assert_allclose(got.variances, info.variances, rtol=1e-10)
    _, path32 = whiten_to_file(_blocks(X, size), tmp_path / "z32.npy", mode=mode)
    Z32 = np.load(path32, mmap_mode="r")
    assert Z32.dtype == np.float32
    np.testing.assert_array_equal(Z32, np.load(path).astype(np.float32))


def test_whitening_statistics_merge_across_ranks(tmp_path):
    """Two ranks (threads), each with its share of the rows, all-reduce their sums: the same map."""
    X = _data()
    world = 2
    barrier, slots = threading.Barrier(world), [None] * world

    def reduce_for(rank):
        def reduce(x):
            slots[rank] = np.array(x)
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return reduce

    shares = [X[:180], X[180:]]
    with ThreadPoolExecutor(world) as pool:
        fits = list(pool.map(lambda r: fit_whitening(_blocks(shares[r], 50), reduce=reduce_for(r)), range(world)))
    _, info = whiten(X)
    for r, (got, rows) in enumerate(fits):
        assert rows == len(shares[r])
        _close(got.components, info.components)
        np.testing.assert_allclose(got.variances, info.variances, rtol=1e-10)
    path = write_whitened(_blocks(shares[1], 64), fits[1][0], tmp_path / "z.npy", fits[1][1], np.float64)
    _close(np.load(path), whiten(X, mode="whiten")[0][180:])


def test_whitening_from_a_run_directory_by_token_blocks(tmp_path):
    X = _data()
    SusceptibilityResult(torch.from_numpy(X.T.copy()), [f"c{j}" for j in range(6)], "seed", 1.0).save(
        tmp_path / "run", shard_tokens=128)
    blocks = lambda: (read_chi(tmp_path / "run", a, min(a + 100, 500)).T for a in range(0, 500, 100))
    info, path = whiten_to_file(blocks, tmp_path / "z.npy", min_variance_ratio=0.01, dtype=np.float64)
    Z, _ = whiten(X, min_variance_ratio=0.01)
    assert info.width == 3
    _close(np.load(path), Z)


def test_blockwise_whitening_refuses_nan_and_leaves_no_file(tmp_path):
    X = _data()
    X[333, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf values \(in rows 300\.\.349\)"):
        whiten_to_file(_blocks(X, 50), tmp_path / "z.npy")
    assert not list(tmp_path.iterdir())
