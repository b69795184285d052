"""The chain engine: component-restricted Langevin chains on a model, with no Lightning in it.

``ChainEngine`` is what the sampler's LightningModule (lit_susc.sampler) drives. For one group of
chains of one component at a time it

- restores w* (or a chain's saved state, in a later round) and restricts the Langevin step, and
  the gradients, to the component (``begin``);
- steps every chain of the group on its own minibatch with its own noise generator (``step``):
  a group of one steps the model's own weights; a larger group keeps its chains' copies of the
  component's parameters stacked and steps them as one batched forward/backward
  (``torch.func.vmap`` of ``functional_call``), each chain as if it ran alone;
- evaluates each chain's losses on a batch (``chain_losses``), reading batches through the
  prefix cache (lit_susc.prefix) when there is one: L_ref on the reference batch
  (``reference_losses``) and the per-token losses of the observation batches
  (``observation_losses``), the two things a draw observes;
- saves and restores where a chain stopped (weights, preconditioner, noise generator), which is
  what lets targeted sampling continue a chain in its next round;
- runs a component's pilot chain (``pilot``), the measurements behind ``burn_in: auto`` and
  ``steps_between_draws: auto`` (lit_susc.schedule decides from them).

The engine is given the optimizer (a lit_susc.langevin sampler, possibly wrapped by Lightning)
and the backward function to use, so Lightning's precision and strategy handling still apply.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .components import Component
from .prefix import PrefixCache
from .schedule import Unit, minibatch_order, unit_seed
from .unit_state import load_unit_tensors, save_unit_tensors

PILOT_PROJECTIONS = 4
"""Fixed random projections of the reference batch's per-token losses that the pilot traces."""

LossFn = Callable[[nn.Module, Any], Tensor]
"""loss_fn(model, batch) -> per-sample losses [B] or per-token losses [B, T]."""


class _Loss(nn.Module):
    """The loss as a module, so that torch.func can call it with one chain's weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


@contextmanager
def _padding_positions_detached(model: nn.Module) -> Iterator[None]:
    """Embeddings with a ``padding_idx`` look up without it and detach the padding positions instead.

    The same forward values, and no gradient from the lookup into the padding row, as
    ``padding_idx`` gives; but under ``vmap``, embedding's backward with a ``padding_idx`` (torch
    2.13) zeroes that row for the first chain of the batch only. A tied output head still gives
    the row its own gradient, as it does for a lone chain.
    """
    padded = [(m, m.padding_idx) for m in model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None]
    handles = []
    for module, pad in padded:
        module.padding_idx = None
        handles.append(module.register_forward_hook(
            lambda _m, args, out, pad=pad: torch.where((args[0] == pad).unsqueeze(-1), out.detach(), out)))
    try:
        yield
    finally:
        for (module, pad), handle in zip(padded, handles, strict=True):
            handle.remove()
            module.padding_idx = pad


class ChainEngine:
    """Groups of chains of one component on ``model`` (module docstring).

    ``optimizer`` is the Langevin sampler as the training loop holds it (``step``/``zero_grad``;
    its ``.optimizer``, or itself, has ``restore_anchor``, ``restrict``, ``chain_state`` and
    ``step_chain``); ``backward(loss)`` computes the gradients. ``reference`` and ``observation``
    are already on ``device``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer, backward: Callable[[Tensor], None],
                 device: torch.device, reference: Any, observation: Sequence[Any],
                 prefix: PrefixCache | None = None, observation_dtype: str = "float32") -> None:
        self.model, self.loss_fn, self.optimizer, self.backward = model, loss_fn, optimizer, backward
        self.device, self.reference, self.observation = device, reference, list(observation)
        self.prefix, self.observation_dtype = prefix, observation_dtype
        self.params = dict(model.named_parameters())
        self.observation_shape: tuple[int, ...] | None = None
        self._stacked: dict[str, Tensor] | None = None
        self._chain_states: list[dict[str, dict]] = []
        self.generators: list[torch.Generator] = []

    @property
    def _sampler(self):
        """The Langevin sampler itself (Lightning wraps it)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    # -- a group of chains --------------------------------------------------------------------

    def restrict(self, component: Component, lone: bool) -> None:
        """w* everywhere, the Langevin step and the gradients restricted to ``component``."""
        sampler = self._sampler
        sampler.restore_anchor()
        sampler.restrict({self.params[n]: m for n, m in component.items()})
        if self.prefix is not None:
            self.prefix.begin(component)
        for name, p in self.params.items():
            p.requires_grad_(lone and name in component)

    def begin(self, component: Component, units: list[Unit], seed: int, state_dir: Callable[[Unit], Path]) -> None:
        """Start the group ``units`` (chains of ``component``): restricted at w*, each chain with its
        noise generator; in a later round, each chain where its previous round stopped
        (``state_dir(unit)``: the directory a unit's state is saved in)."""
        self.restrict(component, lone=len(units) == 1)
        self.generators = []
        for unit in units:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(unit_seed(seed, unit.component_index, unit.chain, 0))
            self.generators.append(generator)
        names = [n for n in self.params if n in component]
        if len(units) == 1:
            self._stacked = None
        else:
            # The chains' own copies of the component's parameters (in the model's order: the order
            # in which a lone chain's optimizer draws its noise); the model itself stays at w*.
            self._stacked = {n: self.params[n].detach().unsqueeze(0).repeat(len(units), *[1] * self.params[n].dim())
                             .requires_grad_(True) for n in names}
            self._chain_states = [{n: self._sampler.chain_state(self.params[n]) for n in names} for _ in units]
        if units[0].round > 0:
            for k, unit in enumerate(units):
                previous = Unit(unit.index, unit.component_index, unit.component, unit.chain, unit.round - 1)
                self._load_chain(state_dir(previous), k, names)

    def end(self) -> None:
        """Drop the group's stacked copies (the model's weights are left as they are)."""
        self._stacked = None

    def step(self, views: list[Any], norms: list[dict | None]) -> Tensor:
        """One Langevin step of every chain of the group on its minibatch; their losses [chains].
        ``norms[k]``: a dict to receive chain k's step norms (lit_susc.langevin.STEP_NORMS), or None."""
        opt = self.optimizer
        if self._stacked is None:
            opt.zero_grad(set_to_none=True)
            losses = self.loss_fn(self.model, views[0]).mean()[None]
            self.backward(losses.sum())
            opt.step(generator=self.generators[0], norms=norms[0])
            return losses
        for value in self._stacked.values():
            value.grad = None
        stacked = tree_map(lambda *xs: torch.stack(xs), *views)
        losses = self.chain_losses(stacked, mapped=True).flatten(1).mean(1)
        self.backward(losses.sum())
        for k, generator in enumerate(self.generators):
            self._sampler.step_chain([(value[k], value.grad[k], self._chain_states[k][name])
                                      for name, value in self._stacked.items()], generator=generator, norms=norms[k])
        return losses

    # -- what a draw observes -----------------------------------------------------------------

    def chain_losses(self, batch: Any, mapped: bool = False) -> Tensor:
        """Every chain's losses on ``batch`` (one batch per chain when ``mapped``): [chains, *loss shape]."""
        if self._stacked is None:
            return self.loss_fn(self.model, batch)[None]
        params = {f"model.{n}": v for n, v in self._stacked.items()}
        loss = _Loss(self.model, self.loss_fn)
        with _padding_positions_detached(self.model):
            return torch.func.vmap(lambda p, b: torch.func.functional_call(loss, p, (b,)),
                                    in_dims=(0, 0 if mapped else None))(params, batch)

    def view(self, kind: str, index: int, batch: Any) -> Any:
        """The batch as the loss reads it: its cached prefix when there is one."""
        return batch if self.prefix is None else self.prefix.view(kind, index, batch)

    def reference_losses(self) -> Tensor:
        """L_ref(w) of every chain of the group: mean loss over the reference batch, float64 [chains]."""
        return self.chain_losses(self.view("reference", 0, self.reference)).double().flatten(1).mean(1)

    def observation_losses(self) -> Tensor:
        """Per-sample / per-token losses of all observation batches, flattened, float64 [chains, T].

        With ``observation_dtype: bfloat16`` the forward pass runs under autocast."""
        low = self.observation_dtype == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
            losses = [self.chain_losses(self.view("observation", i, b)) for i, b in enumerate(self.observation)]
        if self.observation_shape is None:
            self.observation_shape = (sum(x.shape[1] for x in losses), *losses[0].shape[2:])
        return torch.cat([x.flatten(1) for x in losses], dim=1).double()

    # -- where a chain stopped ----------------------------------------------------------------

    def _chain_tensors(self, k: int) -> tuple[dict[str, Tensor], dict[str, dict]]:
        """Chain k's weights and optimizer states of the component, by parameter name."""
        if self._stacked is None:
            state = self._sampler.state
            names = [n for n, p in self.params.items() if state[p].get("active")]
            return {n: self.params[n] for n in names}, {n: state[self.params[n]] for n in names}
        return {n: v[k] for n, v in self._stacked.items()}, self._chain_states[k]

    def save_chain(self, directory: Path, k: int) -> None:
        """Where chain k stopped: its weights, preconditioner and noise generator (the next round's start)."""
        values, states = self._chain_tensors(k)
        tensors = {f"w.{n}": v.detach() for n, v in values.items()}
        tensors |= {f"v.{n}": st["square_avg"] for n, st in states.items() if "square_avg" in st}
        tensors["generator"] = self.generators[k].get_state()
        save_unit_tensors(directory, "chain", tensors)

    @torch.no_grad()
    def _load_chain(self, directory: Path, k: int, names: list[str]) -> None:
        saved = load_unit_tensors(directory, "chain", self.device)
        values, states = self._chain_tensors(k)
        for n in names:
            values[n].copy_(saved[f"w.{n}"])
            if f"v.{n}" in saved:
                states[n]["square_avg"] = saved[f"v.{n}"].clone()
        self.generators[k].set_state(saved["generator"].cpu())

    # -- the pilot ----------------------------------------------------------------------------

    def pilot(self, component: Component, component_index: int, name: str, seed: int, steps: int,
              sampling: Sequence[Any], ref_loss_star: Tensor) -> dict:
        """A lone chain of the component from w* (its own seeds): phi and ``PILOT_PROJECTIONS`` fixed
        random projections of the reference batch's per-token losses after every step (one reference
        pass), and the cost of a full draw in SGLD steps, timed. Returns ``phi`` [steps],
        ``projected`` [projections, steps] and ``draw_cost_measured``; the model is back at w*."""
        self.restrict(component, lone=True)
        self._stacked = None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(unit_seed(seed, component_index, 0, 2))
        self.generators = [generator]
        order = minibatch_order(seed, component_index, 0, 3, len(sampling), steps)
        reference = self.view("reference", 0, self.reference)
        star = self.chain_losses(reference).double().flatten()
        projection = torch.randn(PILOT_PROJECTIONS, len(star), dtype=torch.float64, device=self.device,
                                 generator=torch.Generator(device=self.device)
                                 .manual_seed(unit_seed(seed, component_index, 0, 4)))
        phi, projected, step_time = [], [], 0.0
        for i in order:
            start = time.perf_counter()
            loss = float(self.step([self.view("sampling", int(i), sampling[i])], [None])[0].detach())
            step_time += time.perf_counter() - start
            if not math.isfinite(loss):
                raise FloatingPointError(f"the pilot chain of component {name!r} diverged (minibatch loss {loss}); "
                                         "lower the lr or raise the localization")
            with torch.no_grad():  # one reference pass gives phi and the per-token losses projected
                losses = self.chain_losses(reference).double().flatten()
                phi.append(float(losses.mean() - ref_loss_star))
                projected.append((projection @ (losses - star)).cpu().numpy())
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(2):
                self.reference_losses(), self.observation_losses()
        measured = (time.perf_counter() - start) / 2 / (step_time / len(order))
        self._sampler.restore_anchor()
        return {"phi": phi, "projected": np.asarray(projected).T, "draw_cost_measured": measured}
