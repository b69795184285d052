"""The LLC of a reduced-rank regression against its known learning coefficient (design.md 6).

Linear m -> h -> n network without biases, x and y independent N(0, 1), n = 1000 samples, at the
most singular true parameter w* = 0; with nbeta = n / ln n the estimate
nbeta * (E[L_n(w)] - L_n(w*)) approaches the learning coefficient (Aoyagi): (8, 3, 4) -> 6.0.
"""

import math

from reduced_rank import N, loss_fn, rrr

from lit_susc import SGLDConfig, estimate_susceptibilities


def test_reduced_rank_regression_llc_within_20_percent(one_thread, tmp_path):
    model, batches, X, Y = rrr()
    sgld = SGLDConfig(lr=1e-3, nbeta=N / math.log(N), localization=1.0, chains=4, draws=400, burn_in=200,
                      steps_between_draws=2, seed=0)
    res = estimate_susceptibilities(model, loss_fn, batches, [(X[:8], Y[:8])], sgld=sgld, reference_data=(X, Y),
                                    trainer={"accelerator": "cpu", "enable_progress_bar": False},
                                    run_dir=tmp_path)
    assert res.components == ["all"]
    assert abs(res.llc["all"]["mean"] - 6.0) <= 0.2 * 6.0, res.llc["all"]
