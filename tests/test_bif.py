"""Bayesian influence functions against the linear-Gaussian oracle (design.md sections 2 and 6).

Model y = theta^T x, per-sample loss l_j = (y_j - theta^T x_j)^2 / 2, full-batch SGLD at the
least-squares point theta*. The localized posterior of the whole model is Gaussian,
theta - theta* ~ N(0, S) with S = (nbeta H + localization I)^-1, H = X^T X / n. With residuals
r_j = y_j - theta*^T x_j and Sigma_ij = x_i^T S x_j, l_j = (x_j^T delta - r_j)^2 / 2 and

    Cov(l_i, l_q) = Sigma_iq^2 / 2 + r_i r_q Sigma_iq       (Isserlis' theorem)

so BIF(z_i, q) = -Cov(l_i, l_q) exactly.
"""

import numpy as np
import pytest
import torch
from linear_gaussian import loss_fn, model_at, problem

from lit_susc import BIFResult, SGLDConfig, estimate_bif
from lit_susc.covariance import CrossCovarianceSums, bayesian_influence

N, D, N_TRAIN = 48, 4, 24
NBETA, GAMMA = 1000.0, 100.0


def _problem():
    return problem(N, D, label_noise=0.1, seed=1)


def exact_bif():
    X, y, theta = _problem()
    X, y, theta = X.double(), y.double(), theta.double()
    S = torch.linalg.inv(NBETA * X.T @ X / N + GAMMA * torch.eye(D, dtype=torch.float64))
    r = y - X @ theta
    sigma = X[:N_TRAIN] @ S @ X[N_TRAIN:].T
    return -(sigma ** 2 / 2 + torch.outer(r[:N_TRAIN], r[N_TRAIN:]) * sigma)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    X, y, theta = _problem()
    model = model_at(theta)
    sgld = SGLDConfig(lr=5e-5, nbeta=NBETA, localization=GAMMA, chains=8, draws=400, burn_in=100,
                      steps_between_draws=4, seed=0)
    res = estimate_bif(model, loss_fn, [(X, y)], [(X[:N_TRAIN], y[:N_TRAIN])], [(X[N_TRAIN:], y[N_TRAIN:])],
                       sgld=sgld, trainer={"accelerator": "cpu", "enable_progress_bar": False},
                       run_dir=tmp_path_factory.mktemp("bif"), top_k=3)
    res.run_dir = tmp_path_factory.getbasetemp()
    return res


def test_bif_matches_the_gaussian_covariance_of_the_two_losses(result):
    estimate, exact = result.bif[0].flatten(), exact_bif().flatten()
    pearson = np.corrcoef(estimate.numpy(), exact.numpy())[0, 1]
    scale = float(estimate @ exact / (exact @ exact))  # least-squares fit estimate ~ scale * exact
    assert pearson >= 0.95, pearson
    assert 0.8 <= scale <= 1.2, scale


def test_bif_is_train_by_query_for_the_whole_model(result):
    assert result.bif.shape == (1, N_TRAIN, N - N_TRAIN)
    assert result.bif.dtype == torch.float64
    assert result.components == ["all"] and result.granularity == "sample"


def test_top_influences_are_the_largest_absolute_values_per_query(result):
    top = result.top_table(3).to_pylist()
    assert len(top) == 3 * (N - N_TRAIN)
    for q in range(N - N_TRAIN):
        column = result.bif[0, :, q]
        expected = column.abs().argsort(descending=True)[:3].tolist()
        assert [r["train"] for r in top if r["query"] == q] == expected


def test_saved_bif_round_trips(result, tmp_path):
    result.save(tmp_path, top_k=2)
    loaded = BIFResult.load(tmp_path)
    assert torch.equal(loaded.bif, result.bif) and loaded.components == result.components
    assert (tmp_path / "top_influences.md").read_text().count("BIF") >= 2 * (N - N_TRAIN)


def test_streaming_sums_equal_the_batch_covariance_and_merge_across_chains():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    first, second = CrossCovarianceSums.zeros(5, 3), CrossCovarianceSums.zeros(5, 3)
    for s in range(50):
        (first if s < 20 else second).update(a[s], b[s])
    first.merge(second)
    exact = (a - a.mean(0)).T @ (b - b.mean(0)) / 50  # the 1/S normalisation
    torch.testing.assert_close(bayesian_influence(first), -exact, rtol=1e-12, atol=1e-14)


def test_a_reliability_target_is_refused_for_a_bif_run():
    X, y = torch.randn(16, 3), torch.randn(16)
    model = torch.nn.Linear(3, 1, bias=False)
    with pytest.raises(ValueError, match="target_reliability"):
        estimate_bif(model, lambda m, b: 0.5 * (b[1] - m(b[0]).squeeze(-1)) ** 2, [(X, y)], [(X[:4], y[:4])],
                     [(X[4:8], y[4:8])], sgld=SGLDConfig(target_reliability=0.8, max_draws=400),
                     trainer={"accelerator": "cpu", "enable_progress_bar": False})
