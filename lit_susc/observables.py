"""What chi correlates the per-token losses with: the observable phi_C, an extension point.

A susceptibility is a covariance under the localized posterior of component C (lit_susc.covariance):

    chi[C, t] = k Cov(phi_C, l_t - L_n),   phi_C(w) = O(w) - O(w*)

where l_t is observation token t's loss, L_n the reference batch's mean loss (the centring term,
always), and k the convention's coefficient (lit_susc.statistics). The observable O is by default
L_n itself, the spec's choice (``ReferenceLoss``: free, since every draw computes L_n anyway). A
study that asks how tokens push on something else (the loss of a query, of a chosen token set, a
probe's output) writes one ``Observable`` subclass: ``evaluate`` returns O for every chain of the
group at its current weights, from the chain engine (``engine.chain_losses(batch)`` runs the loss
with each chain's weights; batches must already be on the engine's device). The LLC and the
diagnostics keep using L_n.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .chains import ChainEngine


class Observable:
    """O(w) for every chain of the group the engine holds, float64 [chains]."""

    def evaluate(self, engine: ChainEngine, reference_losses: Tensor) -> Tensor:
        """O at the chains' current weights; ``reference_losses`` is L_n of every chain [chains],
        already computed at this draw."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies this observable in a run's identity (run.json): a resumed run must use it too."""
        return {"observable": type(self).__name__}


class ReferenceLoss(Observable):
    """O = L_n, the reference batch's mean loss (the default; the spec's phi_C)."""

    def evaluate(self, engine: ChainEngine, reference_losses: Tensor) -> Tensor:
        return reference_losses
