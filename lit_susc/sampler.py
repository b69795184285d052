"""The sampler LightningModule: component-restricted SGLD chains and per-draw observations.

Work is a list of units (component, chain, round). Each unit restores w* (or, in a later round of
targeted sampling, the chain's state where its previous round stopped), restricts the Langevin
step to its component, runs the steps of its component's ``ChainPlan`` (lit_susc.schedule:
burn-in, then ``draws`` draws ``steps_between_draws`` steps apart) on minibatches of the
sampling data, and at every draw evaluates

    L_ref(w_s)   mean per-token loss on the fixed reference batch,
    l_t(w_s)     per-token losses of every observation token,

handing them to the callbacks (which keep only streaming sums). With a loss function that
accepts cached prefixes (``loss_fn.accepts_cached_prefix``, e.g. lit_susc.lm.per_token_loss) the
batches go through a ``PrefixCache`` (lit_susc.prefix) planned from ``compute.memory_budget_gb``,
and the blocks below a component's first block run once per batch. Every unit draws its noise and
its minibatch order from generators seeded by (seed, component index, chain), so results do not
depend on how units are split across ranks or interrupted and resumed. A finished unit leaves a
``done`` marker in the run directory; a restarted run skips those units.

``burn_in: auto`` / ``steps_between_draws: auto`` run a pilot chain per component first (in
``on_fit_start``; its plan is saved under ``state/pilot/``). With ``target_reliability`` every
Lightning epoch is one round: at its end the susceptibility callback hands the components'
reliabilities to ``finish_round``, which records the components that go on under
``state/rounds/`` (the resume state) and stops the Trainer when none does.
"""

from __future__ import annotations

import json
import math
import time
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
from tqdm.auto import tqdm

from .components import Component
from .config import ComputeConfig, SGLDConfig
from .prefix import PrefixCache
from .rundir import write_json
from .schedule import ChainPlan, choose_thinning, covariance_products, mser_burn_in
from .unit_state import load_unit_tensors, save_unit_tensors

PILOT_PROJECTIONS = 4
"""Fixed random projections of the reference batch's per-token losses that the pilot traces."""

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
    """One round of one chain of one component."""

    index: int
    component_index: int
    component: str
    chain: int
    round: int = 0

    @property
    def key(self) -> str:
        return f"{self.component_index:05d}-chain{self.chain:03d}" + (f"-round{self.round:03d}" if self.round else "")


def unit_seed(seed: int, component_index: int, chain: int, stream: int) -> int:
    """A 63-bit seed for one random stream of a chain (0: noise, 1: minibatch order; 2, 3: the
    pilot's noise and order; 4: the pilot's projections)."""
    return int(np.random.SeedSequence([seed, component_index, chain, stream]).generate_state(2, np.uint64)[0] >> 1)


def minibatch_order(seed: int, component_index: int, chain: int, stream: int, n_batches: int, length: int) -> np.ndarray:
    """The first ``length`` minibatch indices of a chain: one random permutation of the batches
    after another (a longer order starts with the shorter one, so rounds continue it)."""
    rng = np.random.default_rng(unit_seed(seed, component_index, chain, stream))
    return np.concatenate([rng.permutation(n_batches) for _ in range(math.ceil(length / n_batches))])[:length]


class ChainSchedule(Dataset):
    """Steps of this rank's pending groups of chains, in order: item i -> {group, step, index, data}.

    A group is up to ``compute.batch_chains`` chains of one component, stepped together through
    the steps of its ``ChainPlan``; ``index`` and ``data`` hold each chain's minibatch (every chain
    keeps its own order). Ranks get the same number of items (idle items, ``group = -1``, pad the
    shorter ones) because Lightning's loop talks to all ranks at every step.
    """

    def __init__(self, groups: Sequence[tuple[int, list[Unit], ChainPlan]], sampling: list[Any], seed: int,
                 length: int) -> None:
        self.groups, self.sampling, self.seed, self.length = list(groups), sampling, seed, length
        self.starts = np.cumsum([0] + [plan.steps for _, _, plan in self.groups])
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, unit: Unit, plan: ChainPlan) -> np.ndarray:
        if unit.index not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[unit.index] = minibatch_order(self.seed, unit.component_index, unit.chain, 1,
                                                       len(self.sampling), plan.first_step + plan.steps)
        return self._orders[unit.index]

    def __getitem__(self, i: int) -> dict:
        g = int(np.searchsorted(self.starts, i, side="right")) - 1
        if g >= len(self.groups):
            return {"group": -1, "step": 0, "index": [0], "data": [self.sampling[0]]}
        group, units, plan = self.groups[g]
        step = i - int(self.starts[g])
        index = [int(self._order(unit, plan)[plan.first_step + step]) for unit in units]
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
    (none when the rank is idle): ``unit``, ``step`` (in the unit's round), ``chain_step`` (in the
    chain, over its rounds), ``minibatch_loss`` (the loss the step used),
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
        self.units: list[Unit] = []  # every unit of every round so far (the callbacks reduce them all)
        self.groups: list[list[Unit]] = []  # this round's groups of chains
        self.round, self.active = 0, list(range(len(self.component_names)))
        self.pilots: dict[int, dict] = {}
        self.reliability_by_round: list[dict[str, float]] = []
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

    def plan(self, component_index: int, round: int | None = None) -> ChainPlan:
        """The steps of a component's chains in a round (this round by default)."""
        round = self.round if round is None else round
        pilot, sgld = self.pilots.get(component_index, {}), self.sgld
        burn_in = pilot["burn_in"] if sgld.burn_in == "auto" else sgld.burn_in
        between = pilot["steps_between_draws"] if sgld.steps_between_draws == "auto" else sgld.steps_between_draws
        first = 0 if round == 0 else burn_in + round * sgld.draws * between
        return ChainPlan(burn_in if round == 0 else 0, between, sgld.draws, first)

    def schedule(self) -> dict[str, dict]:
        """Per component: the plan its chains followed and the draws each chain holds."""
        out = {}
        for c, name in enumerate(self.component_names):
            plan, rounds = self.plan(c, 0), sum(1 for u in self.units if u.component_index == c and u.chain == 0)
            pilot = self.pilots.get(c, {})
            out[name] = {"burn_in": plan.burn_in, "steps_between_draws": plan.steps_between_draws, "rounds": rounds,
                         "draws": rounds * plan.draws, **({"burn_in_settled": pilot["settled"]} if pilot else {}),
                         **({"draw_cost": pilot["draw_cost"]} if pilot else {})}
        return out

    # -- rounds ------------------------------------------------------------------------------------

    def _round_file(self, round: int) -> Path:
        return self.run_dir / "state" / "rounds" / f"round-{round:03d}.json"

    def _load_rounds(self) -> None:
        """Rebuild the rounds decided so far (their files are the resume state) and this round's units."""
        n, chains = len(self.component_names), self.sgld.chains
        self.round, self.active, self.units, self.reliability_by_round = 0, list(range(n)), [], []
        while True:
            self.units += [Unit(self.round * n * chains + c * chains + k, c, self.component_names[c], k, self.round)
                           for c in self.active for k in range(chains)]
            if not self._round_file(self.round).exists():
                break
            decided = json.loads(self._round_file(self.round).read_text())
            self.reliability_by_round.append(decided["reliability"])
            self.active, self.round = decided["continue"], self.round + 1
        size = min(self.compute.batch_chains, chains)
        mine = [u for u in self.units if u.round == self.round]
        self.groups = [mine[i:i + min(size, chains - mine[i].chain)] for i in range(0, len(mine))
                       if mine[i].chain % size == 0]

    def finish_round(self, reliability: dict[str, float]) -> None:
        """End this round: components below the target with draws to spare go on; stop when none does."""
        sgld, trainer = self.sgld, self.trainer
        last = self.round + 1 >= sgld.rounds
        going = [c for c in self.active
                 if not last and not (reliability[self.component_names[c]] >= sgld.target_reliability)]
        if trainer.is_global_zero:
            write_json(self._round_file(self.round), {"continue": going, "reliability": reliability})
            below = [self.component_names[c] for c in going]
            print(f"lit-susc: round {self.round + 1}: {len(self.active) - len(going)} of {len(self.active)} "
                  f"components done (target reliability {sgld.target_reliability})"
                  + (f"; {len(below)} go on: {', '.join(below[:6])}{', ...' if len(below) > 6 else ''}" if below else ""))
        trainer.strategy.barrier("lit-susc round decided")
        self._load_rounds()
        if not self.active or self.round >= sgld.rounds:
            trainer.should_stop = True

    # -- Lightning hooks ----------------------------------------------------------------------

    def configure_optimizers(self):
        return self.sgld.make_optimizer(list(self.model.parameters()))

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size
        plans = {c: self.plan(c) for c in self.active}
        pending = [[(g, units, plans[units[0].component_index]) for g, units in enumerate(self.groups)
                    if g % world == r and not all(self.is_done(u) for u in units)] for r in range(world)]
        length = max(1, max(sum(plan.steps for _, _, plan in p) for p in pending))
        schedule = ChainSchedule(pending[self.global_rank], self.data.sampling, self.sgld.seed, length)
        return DataLoader(schedule, batch_size=None, shuffle=False, num_workers=0)

    def on_fit_start(self) -> None:
        # The sampled part of the model runs in eval mode (no dropout): the posterior is over the
        # deterministic loss. Observation data stays on the device for the whole run.
        self._reference = self._to_device(self.data.reference)
        self._observation = [self._to_device(b) for b in self.data.observation]
        shapes = {tuple(tuple(x.shape) for x in tree_leaves(b)) for b in self.data.sampling}
        if self.compute.batch_chains > 1 and self.sgld.chains > 1 and len(shapes) > 1:
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
        if self.sgld.needs_pilot:
            self._run_pilots()
        self._load_rounds()

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if batch["group"] < 0:
            return {"chains": []}
        units, step = self.groups[batch["group"]], batch["step"]
        plan = self.plan(units[0].component_index)
        if step == 0:
            self._begin_group(units)
        is_draw = plan.is_draw(step)
        norms = [{} if is_draw else None for _ in units]  # the step's norms are reported at draws
        views = [self._view("sampling", i, data) for i, data in zip(batch["index"], batch["data"])]
        losses = self._step(views, norms)
        draws = [None] * len(units)
        if is_draw:
            with torch.no_grad():
                ref, obs = self.reference_losses(), self.observation_losses()
            draws = [{"ref_loss": ref[k], "phi": ref[k] - self.ref_loss_star, "obs_losses": obs[k], "norms": norms[k]}
                     for k in range(len(units))]
        done = step == plan.steps - 1
        return {"chains": [{"unit": unit, "step": step, "chain_step": plan.first_step + step,
                            "minibatch_loss": losses[k].detach(), "draw": draws[k], "unit_done": done}
                           for k, unit in enumerate(units)]}

    def on_train_batch_end(self, outputs: dict, batch: Any, batch_idx: int) -> None:
        # Callbacks have saved their part of the unit by now (their hooks run first).
        for k, chain in enumerate(outputs["chains"]):
            if chain["unit_done"]:
                unit = chain["unit"]
                if unit.round + 1 < self.sgld.rounds:  # a later round may continue this chain
                    self._save_chain(unit, k)
                path = self.unit_dir(unit)
                path.mkdir(parents=True, exist_ok=True)
                write_json(path / "done.json", {"component": unit.component, "chain": unit.chain, "round": unit.round})

    def on_train_end(self) -> None:
        self.hand_back()

    def hand_back(self) -> None:
        """The model as it came: at w*, with its own requires_grad flags (also after a failed fit)."""
        if self._trainer is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].restore_anchor()
        self._stacked = None
        for name, p in self._params.items():
            p.requires_grad_(self._requires_grad[name])

    # -- the pieces ---------------------------------------------------------------------------

    def _step(self, views: list[Any], norms: list[dict | None]) -> Tensor:
        """One Langevin step of every chain of the group on its minibatch; their losses [chains]."""
        opt = self.optimizers()
        if self._stacked is None:
            opt.zero_grad(set_to_none=True)
            losses = self.loss_fn(self.model, views[0]).mean()[None]
            self.manual_backward(losses.sum())
            opt.step(generator=self._generators[0], norms=norms[0])
            return losses
        for value in self._stacked.values():
            value.grad = None
        stacked = tree_map(lambda *xs: torch.stack(xs), *views)
        losses = self._chain_losses(stacked, mapped=True).flatten(1).mean(1)
        self.manual_backward(losses.sum())
        for k, generator in enumerate(self._generators):
            opt.optimizer.step_chain([(value[k], value.grad[k], self._chain_states[k][name])
                                      for name, value in self._stacked.items()], generator=generator, norms=norms[k])
        return losses

    def _restrict(self, comp: Component, lone: bool) -> None:
        """w* everywhere, the Langevin step and the gradients restricted to ``comp``."""
        opt = self.optimizers().optimizer
        opt.restore_anchor()
        opt.restrict({self._params[n]: m for n, m in comp.items()})
        if self.prefix is not None:
            self.prefix.begin(comp)
        for name, p in self._params.items():
            p.requires_grad_(lone and name in comp)

    def _begin_group(self, units: list[Unit]) -> None:
        opt = self.optimizers().optimizer
        comp = self.components[units[0].component]
        self._restrict(comp, lone=len(units) == 1)
        self._generators = []
        for unit in units:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(unit_seed(self.sgld.seed, unit.component_index, unit.chain, 0))
            self._generators.append(generator)
        names = [n for n in self._params if n in comp]
        if len(units) == 1:
            self._stacked = None
        else:
            # The chains' own copies of the component's parameters (in the model's order: the order
            # in which a lone chain's optimizer draws its noise); the model itself stays at w*.
            self._stacked = {n: self._params[n].detach().unsqueeze(0).repeat(len(units), *[1] * self._params[n].dim())
                             .requires_grad_(True) for n in names}
            self._chain_states = [{n: opt.chain_state(self._params[n]) for n in names} for _ in units]
        if units[0].round > 0:
            for k, unit in enumerate(units):
                self._load_chain(unit, k, names)

    def _chain_tensors(self, k: int) -> tuple[dict[str, Tensor], dict[str, dict]]:
        """Chain k's weights and optimizer states of the component, by parameter name."""
        opt = self.optimizers().optimizer
        if self._stacked is None:
            names = [n for n, p in self._params.items() if opt.state[p].get("active")]
            return {n: self._params[n] for n in names}, {n: opt.state[self._params[n]] for n in names}
        return {n: v[k] for n, v in self._stacked.items()}, self._chain_states[k]

    def _save_chain(self, unit: Unit, k: int) -> None:
        """Where chain k stopped: its weights, preconditioner and noise generator (the next round's start)."""
        values, states = self._chain_tensors(k)
        tensors = {f"w.{n}": v.detach() for n, v in values.items()}
        tensors |= {f"v.{n}": st["square_avg"] for n, st in states.items() if "square_avg" in st}
        tensors["generator"] = self._generators[k].get_state()
        save_unit_tensors(self.unit_dir(unit), "chain", tensors)

    @torch.no_grad()
    def _load_chain(self, unit: Unit, k: int, names: list[str]) -> None:
        previous = Unit(unit.index, unit.component_index, unit.component, unit.chain, unit.round - 1)
        saved = load_unit_tensors(self.unit_dir(previous), "chain", self.device)
        values, states = self._chain_tensors(k)
        for n in names:
            values[n].copy_(saved[f"w.{n}"])
            if f"v.{n}" in saved:
                states[n]["square_avg"] = saved[f"v.{n}"].clone()
        self._generators[k].set_state(saved["generator"].cpu())

    def _run_pilots(self) -> None:
        """Measure the plan of every component this rank owns (lit_susc.schedule); all ranks read all."""
        n, world = len(self.component_names), self.trainer.world_size
        directory = self.run_dir / "state" / "pilot"
        mine = [c for c in range(self.global_rank, n, world) if not (directory / f"{c:05d}.json").exists()]
        show = self.global_rank == 0 and self.trainer.progress_bar_callback is not None
        for c in tqdm(mine, desc="pilot chains", unit="component", disable=not show):
            write_json(directory / f"{c:05d}.json", self._pilot(c))
        self.trainer.strategy.barrier("lit-susc pilots")
        self.pilots = {c: json.loads((directory / f"{c:05d}.json").read_text()) for c in range(n)}
        self._stacked = None
        if self.global_rank == 0:
            for c, pilot in self.pilots.items():
                print(f"lit-susc: {self.component_names[c]}: {pilot['reason']}")

    def _pilot(self, c: int) -> dict:
        """A lone chain of component c from w*: phi and projections of the reference batch's per-token
        losses after every step (one reference pass), and the cost of a step against a full draw."""
        sgld, name = self.sgld, self.component_names[c]
        self._restrict(self.components[name], lone=True)
        self._stacked = None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(unit_seed(sgld.seed, c, 0, 2))
        self._generators = [generator]
        order = minibatch_order(sgld.seed, c, 0, 3, len(self.data.sampling), sgld.pilot_steps)
        reference = self._view("reference", 0, self._reference)
        star = self._chain_losses(reference).double().flatten()
        projection = torch.randn(PILOT_PROJECTIONS, len(star), dtype=torch.float64, device=self.device,
                                 generator=torch.Generator(device=self.device).manual_seed(unit_seed(sgld.seed, c, 0, 4)))
        phi, projected, step_time = [], [], 0.0
        for i in order:
            start = time.perf_counter()
            loss = float(self._step([self._view("sampling", int(i), self.data.sampling[i])], [None])[0].detach())
            step_time += time.perf_counter() - start
            if not math.isfinite(loss):
                raise FloatingPointError(f"the pilot chain of component {name!r} diverged (minibatch loss {loss}); "
                                         "lower the lr or raise the localization")
            with torch.no_grad():  # one reference pass gives phi and the per-token losses projected
                losses = self._chain_losses(reference).double().flatten()
                phi.append(float(losses.mean() - self.ref_loss_star))
                projected.append((projection @ (losses - star)).cpu().numpy())
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(2):
                self.reference_losses(), self.observation_losses()
        measured = (time.perf_counter() - start) / 2 / (step_time / len(order))
        self.optimizers().optimizer.restore_anchor()
        trace = np.asarray(phi)
        burn_in, settled = mser_burn_in(trace) if sgld.burn_in == "auto" else (min(sgld.burn_in, len(trace) // 2), True)
        draw_cost = measured if sgld.draw_cost is None else sgld.draw_cost
        series = covariance_products(trace[burn_in:], np.asarray(projected).T[:, burn_in:])
        choice = choose_thinning(series, draw_cost, sgld.max_steps_between_draws)
        between = choice.steps_between_draws if sgld.steps_between_draws == "auto" else sgld.steps_between_draws
        reason = [f"burn_in {burn_in} (MSER-5 on the {len(trace)}-step pilot"
                  + ("" if settled else "; phi still drifts at its end: raise sgld.pilot_steps") + ")"
                  if sgld.burn_in == "auto" else f"burn_in {burn_in}"]
        reason.append(choice.describe() if sgld.steps_between_draws == "auto" else f"steps_between_draws {between}")
        return {"burn_in": int(burn_in), "settled": bool(settled), "steps_between_draws": int(between),
                "draw_cost": float(draw_cost), "draw_cost_measured": float(measured), "tau": choice.tau,
                "efficiency": choice.efficiency, "phi": phi, "reason": "; ".join(reason)}

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
