"""The observable phi_C is an extension point (lit_susc.observables): chi is linear in it."""

import torch
from linear_gaussian import loss_fn, model_at, problem

from lit_susc import SGLDConfig, estimate_susceptibilities
from lit_susc.observables import Observable


class AffineReferenceLoss(Observable):
    """O = a L_n + b, computed on the engine's own reference pass."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    def evaluate(self, engine, reference_losses):
        return self.a * engine.reference_losses() + self.b

    def describe(self) -> dict:
        return {"observable": "affine", "a": self.a, "b": self.b}


def _run(observable):
    X, y, theta = problem(64, 3, 0.5, seed=0)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    return estimate_susceptibilities(
        model_at(theta), loss_fn, batches, [(X[:8], y[:8])], sgld=SGLDConfig(lr=1e-3, nbeta=16.0, chains=2, draws=20,
                                                                          burn_in=5, seed=3),
        reference_data=(X, y), trainer={"accelerator": "cpu", "enable_progress_bar": False}, observable=observable)


def test_an_affine_observable_scales_chi_and_leaves_the_llc():
    """Oracle: Cov(a O + b, l) = a Cov(O, l) (the same chains, noise and minibatches), while the LLC,
    which always uses L_n, is unchanged."""
    default, affine = _run(None), _run(AffineReferenceLoss(-2.5, 7.0))
    torch.testing.assert_close(affine.chi, -2.5 * default.chi, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(affine.chi_se, 2.5 * default.chi_se, rtol=1e-9, atol=1e-12)
    assert affine.llc == default.llc
