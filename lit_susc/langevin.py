"""Langevin samplers: SGLD with a localization prior, plain or RMSProp-preconditioned.

One step, per parameter entry, masked to the current component (the mask multiplies the
drift AND the noise, so entries outside the component never move)::

    w <- w - (lr/2) * G * [nbeta * g + localization * (w - w*) + weight_decay * w]
           + sqrt(lr * G) * N(0, noise_level^2)

with g the gradient of the mean minibatch loss and w* the trained point (the "anchor", kept in
the optimizer state so that a checkpoint restores it). Plain SGLD has G = 1. RMSProp-SGLD keeps
V <- a*V + (1-a)*g^2 (raw gradient) and uses G = 1/(sqrt(V) + eps).

Check: noise_level=0, nbeta=1, localization=0, lr=2e is exactly ``torch.optim.SGD(lr=e)``.

Asked for (``norms``, a dict filled in place), a step also reports the Euclidean norms over the
component's moving entries of its three parts and where it lands:

    gradient      ||(lr/2) G nbeta g||          localization  ||(lr/2) G localization (w - w*)||
    noise         ||sqrt(lr G) noise_level xi||  distance      ||w_new - w*||

(weight decay and the bounding box are not reported). A chain whose noise dwarfs its gradient
term is mostly diffusing; one whose localization term grows with its distance is held by the
prior rather than by the loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

STEP_NORMS = ("gradient", "noise", "localization", "distance")
"""The per-step norms a step reports when asked (module docstring)."""


class SGLD(Optimizer):
    """Stochastic gradient Langevin dynamics around an anchor w* (the trained point).

    Args:
        params: parameters to sample (all that any component may touch).
        lr: step size epsilon (drift is lr/2 times the force, noise std sqrt(lr)*noise_level).
        nbeta: inverse temperature times effective sample size, n*beta.
        localization: strength gamma of the Gaussian prior gamma/2 * ||w - w*||^2.
        noise_level: standard deviation multiplier of the injected noise (1 samples exactly).
        weight_decay: coefficient of an extra L2 force weight_decay * w.
        bounding_box: if set, every entry is clamped to [w* - b, w* + b] after each step.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        nbeta: float,
        localization: float = 0.0,
        noise_level: float = 1.0,
        weight_decay: float = 0.0,
        bounding_box: float | None = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if nbeta <= 0:
            raise ValueError(f"nbeta must be positive, got {nbeta}")
        if localization < 0 or noise_level < 0 or weight_decay < 0:
            raise ValueError("localization, noise_level and weight_decay must be >= 0")
        if bounding_box is not None and bounding_box <= 0:
            raise ValueError(f"bounding_box must be positive or None, got {bounding_box}")
        defaults = {
            "lr": lr, "nbeta": nbeta, "localization": localization, "noise_level": noise_level,
            "weight_decay": weight_decay, "bounding_box": bounding_box,
        }
        super().__init__(params, defaults)
        self.set_anchor()

    # -- anchor (w*) and restriction to a component ------------------------------------------

    @torch.no_grad()
    def set_anchor(self) -> None:
        """Record the current parameters as w* (the point chains start from and are pulled to)."""
        for p in self._params():
            self.state[p]["anchor"] = p.detach().clone()

    @torch.no_grad()
    def restore_anchor(self) -> None:
        """Put every parameter back at w* and forget preconditioner statistics (a new chain)."""
        for p in self._params():
            state = self.state[p]
            p.copy_(state["anchor"])
            state.pop("square_avg", None)

    def restrict(self, masks: Mapping[Tensor, Tensor | None]) -> None:
        """Move only these parameters; a mask (bool, the parameter's shape) limits the entries.

        Parameters absent from ``masks`` are frozen. ``None`` means the whole tensor moves.
        """
        ids = {id(p) for p in masks}
        for p in self._params():
            state = self.state[p]
            state["active"] = id(p) in ids
            state["mask"] = None
        for p, mask in masks.items():
            if mask is not None:
                if mask.shape != p.shape or mask.dtype != torch.bool:
                    raise ValueError(f"mask of shape {tuple(mask.shape)} ({mask.dtype}) does not fit a parameter of shape {tuple(p.shape)}; masks are bool tensors of the parameter's shape")
                self.state[p]["mask"] = mask.to(p.device).to(p.dtype)

    # -- the step ------------------------------------------------------------------------------

    def _preconditioner(self, state: dict, grad: Tensor, group: dict) -> Tensor | None:
        """G for this step; None means G = 1 (plain SGLD)."""
        return None

    @torch.no_grad()
    def step(self, closure=None, generator: torch.Generator | None = None,  # type: ignore[override]
             norms: dict[str, Tensor] | None = None):
        """One Langevin step. ``generator`` makes the noise reproducible per chain; ``norms``, if
        given, receives the step's norms (module docstring; float64 scalars, not synchronised)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        squares = None if norms is None else {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None or not state.get("active", True):
                    continue
                self._update(p, p.grad, state, group, generator, squares)
        _finish_norms(squares, norms)
        return loss

    @torch.no_grad()
    def step_chain(self, tensors: list[tuple[Tensor, Tensor, dict]], generator: torch.Generator | None = None,
                   norms: dict[str, Tensor] | None = None) -> None:
        """One Langevin step of one chain whose weights live outside the model (batched chains).

        ``tensors``: (value, gradient, state) per moving parameter, in the model's parameter order;
        each state holds that chain's ``anchor`` and ``mask`` (and its own preconditioner
        statistics). The arithmetic and the noise drawn are those of ``step`` on the same values.
        """
        squares = None if norms is None else {}
        for value, grad, state in tensors:
            self._update(value, grad, state, self.param_groups[0], generator, squares)
        _finish_norms(squares, norms)

    def chain_state(self, p: Tensor) -> dict:
        """A fresh per-chain state for ``p`` (its anchor and mask), for ``step_chain``."""
        return {"anchor": self.state[p]["anchor"], "mask": self.state[p].get("mask")}

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict, generator: torch.Generator | None,
                squares: dict[str, Tensor] | None = None) -> None:
        lr, anchor, mask = group["lr"], state["anchor"], state.get("mask")
        precond = self._preconditioner(state, grad, group)
        if squares is not None:  # before the update: the terms of this step at the current w
            scale = lr / 2 if precond is None else precond * (lr / 2)
            _add_square(squares, "gradient", grad * scale * group["nbeta"], mask)
            _add_square(squares, "localization", (p - anchor) * scale * group["localization"], mask)
        force = grad.mul(group["nbeta"])
        if group["localization"]:
            force.add_(p - anchor, alpha=group["localization"])
        if group["weight_decay"]:
            force.add_(p, alpha=group["weight_decay"])
        if precond is not None:
            force.mul_(precond)
        if group["noise_level"]:
            # The noise joins the drift before the mask and the update: one pass fewer over each.
            noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
            if precond is not None:
                noise.mul_(precond.sqrt())
            if squares is not None:
                _add_square(squares, "noise", noise * (math.sqrt(lr) * group["noise_level"]), mask)
            force.add_(noise, alpha=-2 * group["noise_level"] / math.sqrt(lr))  # -(lr/2) * this = sqrt(lr) * noise
        if mask is not None:
            force.mul_(mask)
        p.add_(force, alpha=-lr / 2)
        if group["bounding_box"] is not None:
            b = group["bounding_box"]
            torch.clamp_(p, min=anchor - b, max=anchor + b)
        if squares is not None:
            _add_square(squares, "distance", p - anchor, mask)

    def _params(self):
        for group in self.param_groups:
            yield from group["params"]


def _add_square(squares: dict[str, Tensor], name: str, values: Tensor, mask: Tensor | None) -> None:
    """Add the squared norm of ``values`` over the moving entries (float64)."""
    if mask is not None:
        values = values * mask
    squares[name] = squares.get(name, 0) + values.double().square().sum()


def _finish_norms(squares: dict[str, Tensor] | None, norms: dict[str, Tensor] | None) -> None:
    if norms is not None:
        for name in STEP_NORMS:
            value = squares.get(name)
            norms[name] = value.sqrt() if value is not None else torch.zeros((), dtype=torch.float64)


class RMSPropSGLD(SGLD):
    """SGLD preconditioned by RMSProp statistics of the raw minibatch gradient.

    V <- a*V + (1-a)*g^2 (V starts at 0 each chain), G = 1/(sqrt(V) + eps); the drift is
    multiplied by G and the noise by sqrt(G).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, nbeta: float, localization: float = 0.0,
                 noise_level: float = 1.0, weight_decay: float = 0.0, bounding_box: float | None = None,
                 alpha: float = 0.99, eps: float = 0.1) -> None:
        if not 0 <= alpha < 1 or eps <= 0:
            raise ValueError(f"RMSProp needs 0 <= alpha < 1 and eps > 0, got alpha={alpha}, eps={eps}")
        super().__init__(params, lr, nbeta, localization, noise_level, weight_decay, bounding_box)
        for group in self.param_groups:
            group.update(alpha=alpha, eps=eps)

    def _preconditioner(self, state: dict, grad: Tensor, group: dict) -> Tensor:
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(grad)
        v = state["square_avg"]
        v.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
        return (v.sqrt() + group["eps"]).reciprocal_()


SAMPLERS: dict[str, type[SGLD]] = {"sgld": SGLD, "rmsprop_sgld": RMSPropSGLD}
