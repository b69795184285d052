"""The sampler LightningModule: component-restricted SGLD chains and per-draw observations.

Work is a list of units (component, chain). Each unit restores w*, restricts the Langevin step to
its component, runs ``burn_in + draws * steps_between_draws`` steps on minibatches of the
sampling data, and after every ``steps_between_draws`` steps past burn-in evaluates

    L_ref(w_s)   mean per-token loss on the fixed reference batch,
    l_t(w_s)     per-token losses of every observation token,

handing them to the callbacks (which keep only streaming sums). With a loss function that
accepts cached prefixes (``loss_fn.accepts_cached_prefix``, e.g. lit_susc.lm.per_token_loss) the
batches go through a ``PrefixCache`` (lit_susc.prefix) planned from ``compute.memory_budget_gb``,
and the blocks below a component's first block run once per batch. Every unit draws its noise and
its minibatch order from generators seeded by (seed, component index, chain), so results do not
depend on how units are split across ranks or interrupted and resumed. A finished unit leaves a
``done`` marker in the run directory; a restarted run skips those units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.data import DataLoader, Dataset

from .components import Component
from .config import ComputeConfig, SGLDConfig
from .prefix import PrefixCache

LossFn = Callable[[nn.Module, Any], Tensor]
"""loss_fn(model, batch) -> per-sample losses [B] or per-token losses [B, T]."""


@dataclass
class SamplingData:
    """The three kinds of data a susceptibility run reads."""

    sampling: list[Any]
    """Minibatches for the SGLD gradients (cycled in a per-chain random order)."""
    observation: list[Any]
    """Batches whose per-sample/per-token losses are observed at every draw (chi's columns)."""
    reference: Any
    """The fixed batch defining L_ref, phi_C = L_ref(w) - L_ref(w*), and L_n."""

    def __post_init__(self) -> None:
        if not self.sampling:
            raise ValueError("sampling data is empty: give at least one minibatch for the SGLD gradients")
        if not self.observation:
            raise ValueError("observation data is empty: give at least one batch whose losses are observed")


@dataclass(frozen=True)
class Unit:
    """One chain of one component."""

    index: int
    component_index: int
    component: str
    chain: int

    @property
    def key(self) -> str:
        return f"{self.component_index:05d}-chain{self.chain:03d}"


def unit_seed(seed: int, component_index: int, chain: int, stream: int) -> int:
    """A 63-bit seed for one random stream (0: noise, 1: minibatch order) of one unit."""
    return int(np.random.SeedSequence([seed, component_index, chain, stream]).generate_state(2, np.uint64)[0] >> 1)


class ChainSchedule(Dataset):
    """Steps of this rank's pending groups of chains, in order: item i -> {group, step, index, data}.

    A group is up to ``compute.batch_chains`` chains of one component, stepped together; ``index``
    and ``data`` hold each chain's minibatch (every chain keeps its own order). Ranks get the same
    number of items (idle items, ``group = -1``, pad the shorter ones) because Lightning's loop
    talks to all ranks at every step.
    """

    def __init__(self, groups: Sequence[tuple[int, list[Unit]]], steps_per_chain: int, sampling: list[Any],
                 seed: int, length: int) -> None:
        self.groups, self.steps, self.sampling, self.seed, self.length = list(groups), steps_per_chain, sampling, seed, length
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, unit: Unit) -> np.ndarray:
        if unit.index not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            rng = np.random.default_rng(unit_seed(self.seed, unit.component_index, unit.chain, 1))
            n = len(self.sampling)
            reps = math.ceil(self.steps / n)
            self._orders[unit.index] = np.concatenate([rng.permutation(n) for _ in range(reps)])
        return self._orders[unit.index]

    def __getitem__(self, i: int) -> dict:
        g, step = divmod(i, self.steps)
        if g >= len(self.groups):
            return {"group": -1, "step": step, "index": [0], "data": [self.sampling[0]]}
        group, units = self.groups[g]
        index = [int(self._order(unit)[step]) for unit in units]
        return {"group": group, "step": step, "index": index, "data": [self.sampling[j] for j in index]}


class _Loss(nn.Module):
    """The loss as a module, so that torch.func can call it with one chain's weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class SusceptibilitySampler(L.LightningModule):
    """Runs the (component, chain) units; callbacks turn its draws into chi, LLCs and traces.

    Chains of one component run in groups of ``compute.batch_chains``: a group of one steps the
    model's own weights; a larger group keeps its chains' copies of the component's parameters
    stacked and steps them as one batched forward/backward (``torch.func.vmap`` of
    ``functional_call``), each chain with its own minibatches and noise, as if run alone.

    ``training_step`` returns ``{"chains": [...]}``, for callbacks one dict per chain of the step
    (none when the rank is idle): ``unit``, ``step``, ``minibatch_loss`` (the loss the step used),
    ``draw`` (None, or a dict with ``phi``, ``ref_loss``, ``obs_losses`` [T] float64 and ``norms``,
    the step's norms of lit_susc.langevin.STEP_NORMS) and ``unit_done``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, components: dict[str, Component],
                 data: SamplingData, sgld: SGLDConfig, run_dir: str | Path, compute: ComputeConfig | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.loss_fn, self.components, self.data, self.sgld = model, loss_fn, components, data, sgld
        self.compute = compute or ComputeConfig()
        self.prefix: PrefixCache | None = None
        self.run_dir = Path(run_dir)
        self.component_names = list(components)
        self.units = [Unit(i * sgld.chains + k, i, name, k)
                      for i, name in enumerate(self.component_names) for k in range(sgld.chains)]
        size = min(self.compute.batch_chains, sgld.chains)
        self.groups = [self.units[i * sgld.chains + k:i * sgld.chains + min(k + size, sgld.chains)]
                       for i in range(len(self.component_names)) for k in range(0, sgld.chains, size)]
        self._stacked: dict[str, Tensor] | None = None
        self._chain_states: list[dict[str, dict]] = []
        self._generators: list[torch.Generator] = []
        self.ref_loss_star: Tensor | None = None
        self.observation_losses_star: Tensor | None = None
        self.observation_shape: tuple[int, ...] | None = None
        self._params = dict(model.named_parameters())
        self._requires_grad = {n: p.requires_grad for n, p in self._params.items()}

    # -- bookkeeping on disk ----------------------------------------------------------------

    def unit_dir(self, unit: Unit) -> Path:
        return self.run_dir / "state" / "units" / unit.key

    def is_done(self, unit: Unit) -> bool:
        return (self.unit_dir(unit) / "done.json").exists()

    def owned_units(self) -> list[Unit]:
        """Units this rank reduces at the end (all units, split round-robin over ranks)."""
        rank, world = self.global_rank, self.trainer.world_size
        return [u for u in self.units if u.index % world == rank]

    # -- Lightning hooks ----------------------------------------------------------------------

    def configure_optimizers(self):
        return self.sgld.make_optimizer(list(self.model.parameters()))

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size
        pending = [[(g, units) for g, units in enumerate(self.groups)
                    if g % world == r and not all(self.is_done(u) for u in units)] for r in range(world)]
        mine = pending[self.global_rank]
        length = max(1, max(len(p) for p in pending) * self.sgld.steps_per_chain)
        schedule = ChainSchedule(mine, self.sgld.steps_per_chain, self.data.sampling, self.sgld.seed, length)
        return DataLoader(schedule, batch_size=None, shuffle=False, num_workers=0)

    def on_fit_start(self) -> None:
        # The sampled part of the model runs in eval mode (no dropout): the posterior is over the
        # deterministic loss. Observation data stays on the device for the whole run.
        self._reference = self._to_device(self.data.reference)
        self._observation = [self._to_device(b) for b in self.data.observation]
        shapes = {tuple(tuple(x.shape) for x in tree_leaves(b)) for b in self.data.sampling}
        if len(self.groups) < len(self.units) and len(shapes) > 1:
            raise ValueError(f"compute.batch_chains={self.compute.batch_chains} stacks the chains' minibatches, but "
                             f"the sampling minibatches come in {len(shapes)} shapes; give minibatches of one shape "
                             "(e.g. a number of sampling contexts divisible by the batch size) or batch_chains: 1")
        if self.compute.prefix_cache and getattr(self.loss_fn, "accepts_cached_prefix", False):
            count = lambda batches: [b.numel() for b in batches]  # noqa: E731
            self.prefix = PrefixCache(self.model, self.compute.budget_bytes, {
                "observation": count(self._observation), "reference": count([self._reference]),
                "sampling": count(self.data.sampling)})
            plan = self.prefix.plan()
            if self.global_rank == 0:
                print(f"lit-susc: {plan}")
        with torch.no_grad():
            self.model.eval()
            self.ref_loss_star = self.reference_losses()[0]
            obs = self.observation_losses()[0]
        self.observation_losses_star = obs
        if not torch.isfinite(self.ref_loss_star):
            raise FloatingPointError(f"the reference loss at w* is {self.ref_loss_star.item()}: the trained point "
                                     "must have a finite loss (check the model weights and the data)")
        bad = (~torch.isfinite(obs)).nonzero()
        if len(bad):
            raise FloatingPointError(f"{len(bad)} observation losses at w* are not finite (first at flat index "
                                     f"{bad[0].item()}): check the model weights and the observation data")

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if batch["group"] < 0:
            return {"chains": []}
        units, step = self.groups[batch["group"]], batch["step"]
        if step == 0:
            self._begin_group(units)
        opt = self.optimizers()
        is_draw = self.sgld.is_draw(step)
        norms = [{} if is_draw else None for _ in units]  # the step's norms are reported at draws
        views = [self._view("sampling", i, data) for i, data in zip(batch["index"], batch["data"])]
        if self._stacked is None:
            opt.zero_grad(set_to_none=True)
            losses = self.loss_fn(self.model, views[0]).mean()[None]
            self.manual_backward(losses.sum())
            opt.step(generator=self._generators[0], norms=norms[0])
        else:
            for value in self._stacked.values():
                value.grad = None
            stacked = tree_map(lambda *xs: torch.stack(xs), *views)
            losses = self._chain_losses(stacked, mapped=True).flatten(1).mean(1)
            self.manual_backward(losses.sum())
            for k, generator in enumerate(self._generators):
                opt.optimizer.step_chain([(value[k], value.grad[k], self._chain_states[k][name])
                                          for name, value in self._stacked.items()], generator=generator,
                                         norms=norms[k])
        draws = [None] * len(units)
        if is_draw:
            with torch.no_grad():
                ref, obs = self.reference_losses(), self.observation_losses()
            draws = [{"ref_loss": ref[k], "phi": ref[k] - self.ref_loss_star, "obs_losses": obs[k], "norms": norms[k]}
                     for k in range(len(units))]
        done = step == self.sgld.steps_per_chain - 1
        return {"chains": [{"unit": unit, "step": step, "minibatch_loss": losses[k].detach(), "draw": draws[k],
                            "unit_done": done} for k, unit in enumerate(units)]}

    def on_train_batch_end(self, outputs: dict, batch: Any, batch_idx: int) -> None:
        # Callbacks have saved their part of the unit by now (their hooks run first).
        for chain in outputs["chains"]:
            if chain["unit_done"]:
                unit = chain["unit"]
                path = self.unit_dir(unit)
                path.mkdir(parents=True, exist_ok=True)
                tmp = path / "done.json.tmp"
                tmp.write_text(json.dumps({"component": unit.component, "chain": unit.chain}))
                tmp.replace(path / "done.json")

    def on_train_end(self) -> None:
        # Hand the model back as it came: at w*, with its own requires_grad flags.
        self.optimizers().optimizer.restore_anchor()
        self._stacked = None
        for name, p in self._params.items():
            p.requires_grad_(self._requires_grad[name])

    # -- the pieces ---------------------------------------------------------------------------

    def _begin_group(self, units: list[Unit]) -> None:
        opt = self.optimizers().optimizer
        opt.restore_anchor()
        comp = self.components[units[0].component]
        opt.restrict({self._params[n]: m for n, m in comp.items()})
        if self.prefix is not None:
            self.prefix.begin(comp)
        self._generators = []
        for unit in units:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(unit_seed(self.sgld.seed, unit.component_index, unit.chain, 0))
            self._generators.append(generator)
        for name, p in self._params.items():
            p.requires_grad_(len(units) == 1 and name in comp)
        if len(units) == 1:
            self._stacked = None
            return
        # The chains' own copies of the component's parameters (in the model's order: the order in
        # which a lone chain's optimizer draws its noise); the model itself stays at w*.
        names = [n for n in self._params if n in comp]
        self._stacked = {n: self._params[n].detach().unsqueeze(0).repeat(len(units), *[1] * self._params[n].dim())
                         .requires_grad_(True) for n in names}
        self._chain_states = [{n: opt.chain_state(self._params[n]) for n in names} for _ in units]

    def _chain_losses(self, batch: Any, mapped: bool = False) -> Tensor:
        """Every chain's losses on ``batch`` (one batch per chain when ``mapped``): [chains, *loss shape]."""
        if self._stacked is None:
            return self.loss_fn(self.model, batch)[None]
        params = {f"model.{n}": v for n, v in self._stacked.items()}
        loss = _Loss(self.model, self.loss_fn)
        return torch.func.vmap(lambda p, b: torch.func.functional_call(loss, p, (b,)),
                                in_dims=(0, 0 if mapped else None))(params, batch)

    def _view(self, kind: str, index: int, batch: Any) -> Any:
        """The batch as the loss reads it: its cached prefix when there is one."""
        return batch if self.prefix is None else self.prefix.view(kind, index, batch)

    def reference_losses(self) -> Tensor:
        """L_ref(w) of every chain of the group: mean loss over the reference batch, float64 [chains]."""
        return self._chain_losses(self._view("reference", 0, self._reference)).double().flatten(1).mean(1)

    def observation_losses(self) -> Tensor:
        """Per-sample / per-token losses of all observation batches, flattened, float64 [chains, T].

        With ``compute.observation_dtype: bfloat16`` the forward pass runs under autocast."""
        low = self.compute.observation_dtype == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
            losses = [self._chain_losses(self._view("observation", i, b)) for i, b in enumerate(self._observation)]
        if self.observation_shape is None:
            self.observation_shape = (sum(x.shape[1] for x in losses), *losses[0].shape[2:])
        return torch.cat([x.flatten(1) for x in losses], dim=1).double()

    def _to_device(self, batch: Any) -> Any:
        return self.trainer.strategy.batch_to_device(batch, self.device) if self._trainer is not None else batch
