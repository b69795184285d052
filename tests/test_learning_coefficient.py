"""The LLC of a reduced-rank regression against its known learning coefficient (design.md 6).

Linear m -> h -> n network without biases, x and y independent N(0, 1), n = 1000 samples, at the
most singular true parameter w* = 0; with nbeta = n / ln n the estimate
nbeta * (E[L_n(w)] - L_n(w*)) approaches the learning coefficient (Aoyagi): (8, 3, 4) -> 6.0.
"""

import math

import pytest
import torch
from torch import nn

from lit_susc import SGLDConfig, estimate_susceptibilities


@pytest.fixture
def one_thread():
    # Tiny matmuls: threading only adds overhead (and oversubscribes a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reduced_rank_regression_llc_within_20_percent(one_thread, tmp_path):
    m, h, out, n = 8, 3, 4, 1000
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(n, m, generator=g), torch.randn(n, out, generator=g)
    model = nn.Sequential(nn.Linear(m, h, bias=False), nn.Linear(h, out, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()

    def loss_fn(model, batch):
        x, y = batch
        return 0.5 * ((y - model(x)) ** 2).sum(-1)

    batches = [(X[i:i + 100], Y[i:i + 100]) for i in range(0, n, 100)]
    sgld = SGLDConfig(lr=1e-3, nbeta=n / math.log(n), localization=1.0, chains=4, draws=400, burn_in=200,
                      steps_between_draws=2, seed=0)
    res = estimate_susceptibilities(model, loss_fn, batches, [(X[:8], Y[:8])], sgld=sgld, reference_data=(X, Y),
                                    trainer={"accelerator": "cpu", "enable_progress_bar": False},
                                    run_dir=tmp_path)
    assert res.components == ["all"]
    assert abs(res.llc["all"]["mean"] - 6.0) <= 0.2 * 6.0, res.llc["all"]
