"""The PC basis of chi: sklearn agreement, round trips, whitening, saving, and refused input."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from lit_susc.aux.pca import PCABasis, TargetConfig, fit_pca


def chi_rows(n=500, components=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(components, components, generator=g, dtype=torch.float64)
    return torch.randn(n, components, generator=g, dtype=torch.float64) @ mixing * torch.logspace(0, -2, components) + 3


def fit(rows, **config):
    return fit_pca(lambda: rows.split(128), TargetConfig(**config))


def test_basis_matches_sklearn_pca():
    """Oracle: sklearn.decomposition.PCA (same variances; components equal up to sign)."""
    rows = chi_rows()
    basis = fit(rows, n_pcs=4)
    ref = PCA(n_components=4).fit(rows.numpy())
    assert np.allclose(basis.variances.numpy(), ref.explained_variance_, rtol=1e-10)
    assert np.allclose(np.abs(basis.components.numpy() @ ref.components_.T), np.eye(4), atol=1e-8)


def test_pcs_mapped_back_give_the_chi_they_came_from():
    """Round trip with all PCs: to_components(to_pcs(x)) = x, in the original component order."""
    rows = chi_rows()
    for standardize in (False, True):
        basis = fit(rows, standardize=standardize)
        assert torch.allclose(basis.to_components(basis.to_pcs(rows)), rows, atol=1e-10)


def test_with_fewer_pcs_mapping_back_is_the_orthogonal_projection():
    """Oracle: sklearn's inverse_transform(transform(x)) for the same number of PCs."""
    rows = chi_rows()
    basis = fit(rows, n_pcs=3)
    ref = PCA(n_components=3).fit(rows.numpy())
    assert np.allclose(basis.to_components(basis.to_pcs(rows)).numpy(),
                       ref.inverse_transform(ref.transform(rows.numpy())), atol=1e-10)


def test_whitened_pcs_have_zero_mean_and_unit_covariance_on_the_training_split():
    rows = chi_rows()
    for standardize in (False, True):
        white = (b := fit(rows, standardize=standardize)).whiten(b.to_pcs(rows))
        assert torch.allclose(white.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(torch.cov(white.T), torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_standardize_equals_pca_of_standardized_columns():
    """Oracle: sklearn PCA of the columns divided by their (ddof=1) standard deviation."""
    rows = chi_rows()
    basis = fit(rows, standardize=True)
    ref = PCA().fit((rows / rows.std(0)).numpy())
    assert np.allclose(basis.variances.numpy(), ref.explained_variance_, rtol=1e-10)


def test_saved_basis_loads_identically(tmp_path):
    basis = fit(chi_rows(), n_pcs=2)
    basis.save(tmp_path / "pca.safetensors")
    loaded = PCABasis.load(tmp_path / "pca.safetensors")
    assert all(torch.equal(getattr(loaded, k), getattr(basis, k)) for k in ("mean", "scale", "components", "variances"))


def test_more_pcs_than_components_is_refused():
    with pytest.raises(ValueError, match="n_pcs=7 asked, but chi has 6 components"):
        fit(chi_rows(), n_pcs=7)


def test_non_finite_chi_is_refused():
    rows = chi_rows()
    rows[10, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fit(rows)


def test_pcs_without_variance_are_refused():
    rows = chi_rows(components=4)[:, [0, 1, 0, 1]]  # rank 2
    with pytest.raises(ValueError, match="spans only 2 dimensions"):
        fit(rows, n_pcs=4)


def test_every_pc_means_every_pc_the_rows_span():
    """n_pcs: null asks for every PC: of rows of rank 2 in 4 columns, the 2 with variance."""
    rows = chi_rows(components=4)[:, [0, 1, 0, 1]]
    assert fit(rows).n_pcs == 2


def test_pc_reliability_predicts_the_split_half_correlation_of_pc_scores():
    """Oracle: two noisy copies of the same chi (independent noise of known SD per component, as
    independent chains give): the correlation of their PC-k scores is reliability_k."""
    from lit_susc.aux.pca import pc_reliability

    g = torch.Generator().manual_seed(7)
    signal = chi_rows(n=20000, components=5, seed=3)
    sd = torch.tensor([0.3, 0.05, 0.2, 0.01, 0.1], dtype=torch.float64)
    copies = [signal + torch.randn(signal.shape, generator=g, dtype=torch.float64) * sd for _ in range(2)]
    basis = fit(copies[0])
    predicted = pc_reliability(basis, sd.square())
    scores = [basis.to_pcs(c) for c in copies]
    measured = torch.tensor([np.corrcoef(scores[0][:, k], scores[1][:, k])[0, 1] for k in range(5)])
    assert torch.allclose(predicted, measured.clamp_min(0), atol=0.03), (predicted, measured)
    assert predicted.min() < 0.5 < predicted.max()  # the check spans clean and noisy PCs
